"""Check that two Hugging Face checkpoints share one tokenizer before comparing their losses.

A retention report compares per-token losses of a base and an adapted model on the same
held-out text, tokenized once with the base model's tokenizer. That is only meaningful when
both models read the same token ids: same vocabulary, same merges, same special tokens, same
embedding size. ADEPT never changes the tokenizer (the checkpointer copies its files
verbatim), so any difference means the two directories are not a base/adapted pair.

The files that define tokenization are compared by content. JSON files are compared after
parsing (key order and whitespace do not matter), and ``tokenizer.json`` merges are compared
in one spelling (tokenizers writes ``"a b"`` or ``["a", "b"]`` depending on its version).
Files that do not change which ids a text gets (``tokenizer_config.json``'s chat template,
``generation_config.json``) are not compared.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
    "original/tokenizer.model",
)


def tokenizer_file_digests(checkpoint_dir: str | Path) -> dict[str, str]:
    """SHA-256 of each tokenizer file in a model directory (JSON files canonicalised).

    Args:
        checkpoint_dir (str | Path): an HF model directory.

    Returns:
        dict[str, str]: ``{relative file name: hex digest}`` for the files of
        ``TOKENIZER_FILES`` that exist.

    Raises:
        ValueError: a tokenizer JSON file that does not parse.
    """
    root = Path(checkpoint_dir).expanduser()
    found = {}
    for name in TOKENIZER_FILES:
        path = root / name
        if path.is_file():
            found[name] = hashlib.sha256(_canonical_bytes(path)).hexdigest()
    return found


def check_same_tokenizer(base_dir: str | Path, adapted_dir: str | Path) -> None:
    """Raise unless both model directories tokenize identically and have one vocab size.

    Args:
        base_dir (str | Path): the base model directory.
        adapted_dir (str | Path): the adapted model directory.

    Raises:
        ValueError: naming the first difference: the adapted directory has no tokenizer file,
            a tokenizer file is in one directory only or differs, or ``vocab_size`` in the two
            ``config.json`` files differs.
    """
    base, adapted = Path(base_dir).expanduser(), Path(adapted_dir).expanduser()
    base_vocab, adapted_vocab = _vocab_size(base), _vocab_size(adapted)
    if base_vocab != adapted_vocab:
        raise ValueError(
            f"the checkpoints have different vocabularies: vocab_size={base_vocab} in {base} "
            f"but {adapted_vocab} in {adapted}; compare an adapted model only with its own base"
        )
    base_files, adapted_files = tokenizer_file_digests(base), tokenizer_file_digests(adapted)
    if not adapted_files:
        raise ValueError(
            f"{adapted} has no tokenizer files (looked for {', '.join(TOKENIZER_FILES)}); copy "
            f"the base model's ({', '.join(base_files) or 'none found either'}) into it"
        )
    for name in sorted(set(base_files) | set(adapted_files)):
        if name not in adapted_files or name not in base_files:
            has, lacks = (base, adapted) if name in base_files else (adapted, base)
            raise ValueError(
                f"tokenizer mismatch: {name} is in {has} but not in {lacks}; the two "
                "checkpoints must ship the same tokenizer files"
            )
        if base_files[name] != adapted_files[name]:
            raise ValueError(
                f"tokenizer mismatch: {name} differs between {base} and {adapted}; the adapted "
                "model must use its base model's tokenizer"
            )


def _vocab_size(checkpoint_dir: Path) -> Any:
    config = checkpoint_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} is missing: not a Hugging Face model directory")
    return json.loads(config.read_text()).get("vocab_size")


def _canonical_bytes(path: Path) -> bytes:
    if path.suffix != ".json":
        return path.read_bytes()
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    model = content.get("model") if isinstance(content, dict) else None
    if isinstance(model, dict) and isinstance(model.get("merges"), list):
        model["merges"] = [
            " ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]
        ]
    return json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")
