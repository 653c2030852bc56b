"""Load and save Hugging Face model directories for torchtune decoders.

Why not torchtune's ``FullModelHFCheckpointer``: it has no Qwen3 type, and it copies the input
``config.json`` unchanged, so a model that gained layers would be saved with a stale
``num_hidden_layers``. Here the config is written from the model, and every save is atomic:
files go to a hidden temporary directory beside the target, which is renamed into place only
once complete. A crash leaves the previous checkpoint and no directory that looks finished.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file
from torch import nn

from adept_components import atomic
from adept_components.models.architecture import ModelArchitecture, config_path, read_hf_config
from adept_components.models.convert_weights import hf_name, hf_to_tune, tune_to_hf

SAFETENSORS_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_NOT_COPIED = {"config.json", SAFETENSORS_INDEX, _BIN_INDEX}


class HFCheckpointer:
    """Reads an HF model directory (as ``tune download`` writes it) and writes new ones.

    Args:
        checkpoint_dir (str): input model directory: ``config.json`` plus one
            ``model.safetensors`` or shards listed in ``model.safetensors.index.json``
            (``pytorch_model*.bin`` is read too, with ``weights_only=True``), tokenizer and
            generation files.
        output_dir (str): where saved checkpoints go (one subdirectory each).
        max_shard_size (int): largest safetensors shard written, in bytes.

    Raises:
        FileNotFoundError: missing directory, config.json or weight files.
        ValueError: a config.json this package cannot build.
    """

    def __init__(
        self, checkpoint_dir: str, output_dir: str, max_shard_size: int = 5 * 2**30
    ) -> None:
        self.checkpoint_dir = Path(checkpoint_dir).expanduser()
        self.output_dir = Path(output_dir).expanduser()
        self.max_shard_size = max_shard_size
        self.hf_config = read_hf_config(self.checkpoint_dir)
        self.architecture = ModelArchitecture.from_hf_config(
            self.hf_config, config_path(self.checkpoint_dir)
        )
        self.weight_files = _find_weight_files(self.checkpoint_dir)

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """Read every weight file and convert to torchtune names.

        Returns:
            dict: torchtune-named tensors on CPU, in the checkpoint's dtype.
        """
        hf_state: dict[str, torch.Tensor] = {}
        for path in self.weight_files:
            hf_state.update(read_weight_file(path))
        return hf_to_tune(hf_state, self.architecture)

    def load_into(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Load the checkpoint into ``model`` after checking names and shapes.

        Args:
            model (nn.Module): the decoder built from the YAML ``model`` entry.
            state_dict (dict | None): torchtune-named tensors; default: this checkpoint's.

        Raises:
            ValueError: missing or unexpected tensors, or a shape that does not match the model
                (naming the tensor and both shapes).
        """
        state_dict = self.load_state_dict() if state_dict is None else state_dict
        check_state_dict_matches(model, state_dict, self.architecture.family)
        model.load_state_dict(state_dict, strict=True)

    def save(
        self,
        state_dict: dict[str, torch.Tensor],
        architecture: ModelArchitecture,
        name: str,
        layer_sources: list[int] | None = None,
        extra_json: dict[str, dict[str, Any]] | None = None,
        dtype: torch.dtype | None = None,
        extra_writer: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write a complete HF model directory ``output_dir/name``, atomically.

        Args:
            state_dict (dict): torchtune-named tensors of the model to save (full, not sharded).
            architecture (ModelArchitecture): the saved model's numbers (``architecture_of``).
            name (str): subdirectory name, e.g. ``"step_1000"`` or ``"final"``.
            layer_sources (list[int] | None): base layer each saved layer descends from, to
                re-index per-layer config lists after expansion.
            extra_json (dict | None): further JSON files to write, ``{filename: content}``
                (expansion metadata, training summaries).
            dtype (torch.dtype | None): cast floating tensors to this dtype; default: keep.
            extra_writer (Callable[[Path], None] | None): writes further files (training state
                for resume) into the unfinished directory, so they land atomically with it.

        Returns:
            Path: the finished directory.
        """
        hf_state = tune_to_hf(state_dict, architecture)
        if dtype is not None:
            hf_state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in hf_state.items()}
        config = architecture.to_hf_config(self.hf_config, layer_sources)
        saved_dtype = str(next(iter(hf_state.values())).dtype).removeprefix("torch.")
        for key in ("torch_dtype", "dtype"):
            if key in config or key == "torch_dtype":
                config[key] = saved_dtype

        target = self.output_dir / name
        with atomic.atomic_directory(target) as tmp:
            _copy_support_files(self.checkpoint_dir, tmp, skip=self.weight_files)
            _write_json(tmp / "config.json", config)
            for filename, content in (extra_json or {}).items():
                _write_json(tmp / filename, content)
            write_safetensors_shards(hf_state, tmp, self.max_shard_size)
            if extra_writer is not None:
                extra_writer(tmp)
        return target


def check_state_dict_matches(
    model: nn.Module, state_dict: dict[str, torch.Tensor], family: str
) -> None:
    """Raise one readable error if ``state_dict`` cannot load into ``model`` strictly.

    Args:
        model (nn.Module): target model.
        state_dict (dict): torchtune-named tensors.
        family (str): model family, to name tensors the HF way too.

    Raises:
        ValueError: naming missing/unexpected tensors or the first shape mismatch.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(
            "the checkpoint does not fit the model built from the `model` config entry: "
            f"{len(missing)} tensor(s) missing (e.g. {[hf_name(k, family) for k in missing[:3]]}), "
            f"{len(unexpected)} unexpected (e.g. {[hf_name(k, family) for k in unexpected[:3]]}). "
            "Use a builder that matches config.json (model._component_="
            "adept_components.models.model_from_hf_config)"
        )
    for key, want in expected.items():  # model order: the first mismatch a reader expects
        if state_dict[key].shape != want.shape:
            raise ValueError(
                f"tensor {hf_name(key, family)!r} has shape {tuple(state_dict[key].shape)} in the checkpoint "
                f"but {tuple(want.shape)} in the model built from the `model` config entry; "
                "pick the builder that matches the checkpoint's config.json"
            )


def write_safetensors_shards(
    state: dict[str, torch.Tensor], directory: Path, max_shard_size: int
) -> None:
    """Write ``state`` as HF safetensors: one ``model.safetensors``, or shards plus index.

    ``huggingface_hub.save_torch_state_dict`` does the work, so the files are named and indexed
    as ``transformers`` writes them (``model-00001-of-00003.safetensors``,
    ``model.safetensors.index.json``). Tensors fill shards in ``state`` order; one larger than
    ``max_shard_size`` gets a shard of its own while the others keep filling the open shard.

    Args:
        state (dict): HF-named tensors.
        directory (Path): existing directory to write into.
        max_shard_size (int): bytes per shard at most (a larger single tensor gets its own).
    """
    save_torch_state_dict(dict(state), directory, max_shard_size=max_shard_size)


def read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one ``.safetensors`` or ``.bin`` weight file, on CPU.

    Raises:
        ValueError: the file is truncated, not of its format, or otherwise unreadable; the
            message names the file and what the reader said.
    """
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors raises its own SafetensorError; torch.load many kinds
        size = path.stat().st_size if path.exists() else 0
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch weights"
        raise ValueError(
            f"{path} ({size:,} bytes) is not a readable {kind} file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no detail'}): it is truncated or damaged; "
            "download or copy the checkpoint again"
        ) from None


def _find_weight_files(directory: Path) -> list[Path]:
    for index_name in (SAFETENSORS_INDEX, _BIN_INDEX):
        index = directory / index_name
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(
                    f"{index} is not a weight index (a JSON object with a weight_map): "
                    f"{type(e).__name__}: {e}"
                ) from None
            missing = [n for n in names if not (directory / n).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{index} lists {missing[:3]} but they are not in {directory}: "
                    "the download is incomplete, run `tune download` again"
                )
            return [directory / n for n in names]
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(
            f"no model weights (*.safetensors or pytorch_model*.bin) in {directory}: "
            "checkpointer.checkpoint_dir must be a complete Hugging Face model directory"
        )
    return files


def _copy_support_files(src: Path, dst: Path, skip: Iterable[Path]) -> None:
    """Copy tokenizer, generation config and other non-weight files (``original/`` too)."""
    skip = {p.resolve() for p in skip}
    for item in src.iterdir():
        if item.name.startswith(".") or item.name in _NOT_COPIED or item.resolve() in skip:
            continue
        if item.is_dir():
            # Llama's original/ holds tokenizer.model beside the full consolidated weights.
            ignore = shutil.ignore_patterns(".*", *(f"*{s}" for s in _WEIGHT_SUFFIXES))
            shutil.copytree(item, dst / item.name, ignore=ignore)
        elif not item.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(item, dst / item.name)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
