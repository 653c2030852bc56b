"""Reading text rows from local files or Hugging Face datasets, for the probe and the corpus.

One reader for every data entry of a config, so a path that works for ``probe.source`` works
for ``dataset.source`` too:

- ``.txt``: one row per paragraph (paragraphs separated by a blank line);
- ``.jsonl`` / ``.json`` / ``.parquet``: ``datasets.load_dataset`` with the json/parquet builder;
- a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``:
  ``datasets.load_from_disk`` (the split chosen from a DatasetDict);
- another local dataset directory or a Hugging Face dataset id:
  ``datasets.load_dataset(source, split)`` (``streaming=True`` reads a corpus of billions of
  tokens without downloading it whole).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": None}
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


def read_rows(
    source: str,
    split: str = "train",
    seed: int | None = None,
    streaming: bool = False,
    field: str = "source",
    subset: str | None = None,
) -> Iterable[Mapping[str, Any] | str]:
    """Rows of ``source``: ``str`` paragraphs for ``.txt``, mappings of columns otherwise.

    Args:
        source (str): file path, dataset directory or Hugging Face dataset id.
        split (str): dataset split (a single local file is always its one split).
        seed (int | None): shuffle the rows with this seed; None keeps source order.
        streaming (bool): stream a hub dataset instead of downloading it whole.
        field (str): the config field ``source`` came from, for error messages.
        subset (str | None): dataset configuration name (``load_dataset(source, subset)``),
            e.g. ``"wikitext-103-raw-v1"``.

    Returns:
        Iterable: the rows.

    Raises:
        FileNotFoundError: a path-like source that does not exist.
        ValueError: an unsupported file type.
    """
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in FILE_BUILDERS or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"{field}={str(path)!r} does not exist")
        if path.is_file():
            return _read_file(path, suffix, seed, field)
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _read_saved_dataset(path, split, seed, field)
    return _read_hf_dataset(str(path) if path.exists() else source, subset, split, seed, streaming)


def _read_file(
    path: Path, suffix: str, seed: int | None, field: str
) -> Iterable[Mapping[str, Any] | str]:
    if suffix not in FILE_BUILDERS:
        raise ValueError(
            f"{field}={str(path)!r}: unsupported file type {suffix!r} "
            f"(supported: {sorted(FILE_BUILDERS)})"
        )
    if suffix == ".txt":
        paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(path.read_text(encoding="utf-8"))]
        paragraphs = [p for p in paragraphs if p]
        if seed is not None:
            order = torch.randperm(len(paragraphs), generator=torch.Generator().manual_seed(seed))
            paragraphs = [paragraphs[i] for i in order.tolist()]
        return paragraphs
    import datasets

    # A single file is one split; name it "train" whatever ``split`` says.
    dataset = datasets.load_dataset(FILE_BUILDERS[suffix], data_files=str(path), split="train")
    return dataset.shuffle(seed=seed) if seed is not None else dataset


def _read_saved_dataset(
    path: Path, split: str, seed: int | None, field: str
) -> Iterable[Mapping[str, Any]]:
    """A ``save_to_disk`` directory: a Dataset as it is, a DatasetDict's ``split``."""
    import datasets

    saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise ValueError(
                f"{field}={str(path)!r} is a saved DatasetDict without split {split!r} "
                f"(splits: {', '.join(saved)}); set the split"
            )
        saved = saved[split]
    return saved.shuffle(seed=seed) if seed is not None else saved


def _read_hf_dataset(
    source: str, subset: str | None, split: str, seed: int | None, streaming: bool
) -> Iterable[Mapping[str, Any]]:
    import datasets

    dataset = datasets.load_dataset(source, subset, split=split, streaming=streaming)
    if seed is not None:
        dataset = dataset.shuffle(seed=seed)
    return dataset
