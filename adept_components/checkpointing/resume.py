"""Resume checkpoints that hold what changed: the trained tensors and their optimizer state.

An ADEPT run trains the layer copies (8-18 % of the expanded model); every other weight stays
the base checkpoint's. A ``step_N`` resume checkpoint therefore stores only:

- ``shard-*.safetensors``: the trained tensors (in the dtype they train in, fp32 copies
  included) and their optimizer state, written by ``torch.distributed.checkpoint`` in
  safetensors form: under FSDP2 every rank writes its own shard, nothing is gathered on rank 0,
  and any world size reads it back (each tensor's offsets are in the file headers, so no pickle
  is read);
- ``training_state.pt``: step, LR schedule and unit scales, the optimizer's param groups,
  canary record and RNG (read with ``weights_only=True``);
- ``resume.json``: what the checkpoint is: the run's depth, sequence length and dtype, the
  names of the stored tensors and a reference to the base checkpoint (the digest of its
  ``config.json`` and, per weight file, its size and the digest of its header);
- ``adept_expansion.json``: the expansion, as in a full checkpoint.

Resuming rebuilds the model from the base checkpoint (refused if it no longer matches the
reference), expands it as recorded and loads the stored tensors over it. The copies' starting
values are a function of the base, and the frozen weights never change, so the rebuilt model
is the one that was saved, bit for bit. ``export_hf`` turns such a checkpoint into a complete
Hugging Face directory on request (``adept-cpt export``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from adept_components import atomic
from adept_components.checkpointing.hf_checkpointer import HFCheckpointer
from adept_components.distributed import rank_and_world
from adept_components.expansion import (
    expand_state_dict,
    expansion_extra_json,
    load_expansion_metadata,
)
from adept_components.optim.unit_groups import clean_param_name
from adept_components.trainable import trainable_from_json

RESUME_FILE = "resume.json"
TRAINING_STATE_FILE = "training_state.pt"
FORMAT = "adept-trainable-v1"
_SHARDED = StateDictOptions(full_state_dict=False)  # every rank its own shard


def base_reference(checkpointer: HFCheckpointer) -> dict[str, Any]:
    """What identifies a base checkpoint without reading its weights.

    A file's size and the digest of its safetensors header (tensor names, dtypes, shapes and
    byte offsets) change with any re-export, conversion or truncation; for ``.bin`` files the
    first MiB is hashed instead. Checking costs milliseconds even for an 8B model.

    Args:
        checkpointer (HFCheckpointer): reads the base directory.

    Returns:
        dict: ``{"config_sha256": ..., "weights": {file name: {"bytes", "header_sha256"}}}``.
    """
    directory = checkpointer.checkpoint_dir
    return {
        "config_sha256": hashlib.sha256((directory / "config.json").read_bytes()).hexdigest(),
        "weights": {
            str(path.relative_to(directory)): {
                "bytes": path.stat().st_size,
                "header_sha256": _header_digest(path),
            }
            for path in checkpointer.weight_files
        },
    }


def check_base_reference(saved: dict[str, Any], checkpointer: HFCheckpointer, where: str) -> None:
    """Refuse a base checkpoint that is not the one a resume checkpoint was trained from.

    Args:
        saved (dict): ``base_reference`` as recorded in ``resume.json``.
        checkpointer (HFCheckpointer): the base the run would rebuild from.
        where (str): the resume checkpoint, for the message.

    Raises:
        ValueError: naming what differs (config.json, a file missing, a size or a header).
    """
    now = base_reference(checkpointer)
    problems = []
    if now["config_sha256"] != saved["config_sha256"]:
        problems.append("its config.json differs")
    for name, info in saved["weights"].items():
        if name not in now["weights"]:
            problems.append(f"{name} is missing")
        elif now["weights"][name] != info:
            problems.append(
                f"{name} differs ({now['weights'][name]['bytes']:,} bytes, saved from {info['bytes']:,})"
            )
    problems += [f"{name} is new" for name in now["weights"] if name not in saved["weights"]]
    if problems:
        raise ValueError(
            f"{where} holds only the trained tensors and must be rebuilt from the base checkpoint "
            f"it was trained from, but checkpointer.checkpoint_dir={checkpointer.checkpoint_dir} "
            f"is another: {'; '.join(problems[:3])}. Point checkpointer.checkpoint_dir at that "
            "base (the run started from the one named in resume.json)"
        )


@dataclasses.dataclass(frozen=True)
class TrainableCheckpointInfo:
    """``resume.json``: what a trainable-only checkpoint holds and what it was built on.

    Attributes:
        step (int): the optimizer step it was saved after.
        base_dir (str): the base checkpoint directory the run read (informative).
        base (dict): ``base_reference`` of that directory, checked on resume and export.
        num_layers (int): the trained model's depth (base + copies).
        max_seq_len (int): the run's ``model.max_seq_len`` (the saved config's context).
        dtype (str): the run's dtype (``bfloat16``, ``float32``): a full export's dtype.
        tensors (list[str]): torchtune names of the stored model tensors.
        trainable (dict | None): the run's ``TrainableSet`` record (None: written before the
            record existed; such a run trained layers or matrices, saved unmerged).
    """

    step: int
    base_dir: str
    base: dict[str, Any]
    num_layers: int
    max_seq_len: int
    dtype: str
    tensors: list[str]
    trainable: dict[str, Any] | None = None

    @classmethod
    def read(cls, directory: Path) -> TrainableCheckpointInfo:
        """Read ``directory/resume.json``.

        Raises:
            ValueError: naming the file, when it is not a record of this format.
        """
        path = directory / RESUME_FILE
        try:
            content = json.loads(path.read_text())
            if content.pop("format") != FORMAT:
                raise ValueError("another format")
            return cls(**content)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{path} is not a resume record of this package ({type(e).__name__}: {e}): it is "
                "damaged; delete that checkpoint directory to resume from the one before"
            ) from None

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, indent=2) + "\n"


def check_trainable_files(directory: Path, info: TrainableCheckpointInfo) -> None:
    """Check the shard files of a trainable-only checkpoint without reading their tensors.

    Each file's header must parse and its tensors must end within the file (a truncated copy
    fails here, not half way through loading), and the stored names must cover the record's.

    Args:
        directory (Path): the checkpoint.
        info (TrainableCheckpointInfo): its ``resume.json``.

    Raises:
        ValueError: naming the damaged file, or the tensors no file holds.
    """
    stored: set[str] = set()
    files = sorted(directory.glob("*.safetensors"))
    for path in files:
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                length = struct.unpack("<Q", f.read(8))[0]
                if length > size:
                    raise ValueError(f"header of {length:,} bytes")
                header = json.loads(f.read(length))
            header.pop("__metadata__", None)
            end = 8 + length + max((t["data_offsets"][1] for t in header.values()), default=0)
        except (struct.error, ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(
                f"{path} ({size:,} bytes) is not a readable safetensors file ({e}): it is "
                "damaged; delete that checkpoint directory to resume from the one before"
            ) from None
        if end > size:
            raise ValueError(
                f"{path} is truncated ({size:,} of {end:,} bytes): delete that checkpoint "
                "directory to resume from the one before"
            )
        stored.update(header)
    missing = [name for name in info.tensors if f"model.{name}" not in stored]
    if missing:
        raise ValueError(
            f"{directory} lacks trained tensors {missing[:3]} ({len(files)} shard file(s)): "
            "a shard is missing; delete that checkpoint directory to resume from the one before"
        )


def is_trainable_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` is a trainable-only resume checkpoint (not a full HF one)."""
    return (directory / RESUME_FILE).is_file()


def trainable_names(model: nn.Module) -> list[str]:
    """State-dict names of the parameters that train, in the model's order."""
    return [clean_param_name(name) for name, p in model.named_parameters() if p.requires_grad]


def save_trainable_checkpoint(
    target: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    info: TrainableCheckpointInfo,
    training_state: dict[str, Any],
    extra_json: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Write a trainable-only resume checkpoint to ``target``, atomically. Every rank calls it.

    Args:
        target (Path): ``output_dir/checkpoints/step_N`` (replaced if present).
        model (nn.Module): the model (FSDP2-sharded or not); its ``requires_grad`` parameters
            are saved.
        optimizer (torch.optim.Optimizer): its per-parameter state is saved with the tensors,
            its param groups in ``training_state.pt``.
        info (TrainableCheckpointInfo): the ``resume.json`` record.
        training_state (dict): step, schedule, RNG, ...: written by rank 0 as
            ``training_state.pt`` (plus the optimizer's param groups).
        extra_json (dict | None): further JSON files (the expansion metadata).

    Raises:
        ValueError: an optimizer state value that is neither a tensor nor a plain number.
    """
    rank, world = rank_and_world()
    flat, optim_state = _flat_state(model, optimizer)
    tag = [atomic.new_tag() if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(tag, src=0)
    state = {
        **training_state,
        "optimizer_param_groups": optim_state["param_groups"],
        "optimizer_scalars": _scalars(optim_state),
    }

    def write_shards(directory: Path) -> None:
        if world > 1:
            dist.barrier()  # the directory exists
        writer = HuggingFaceStorageWriter(str(directory), save_distributed=True)
        _quietly(dcp.save, flat, storage_writer=writer, no_dist=world == 1)

    if rank != 0:
        write_shards(atomic.staging_directory(target, tag[0]))
        return
    with atomic.atomic_directory(target, tag[0]) as tmp:
        write_shards(tmp)  # returns once every rank's shard is written
        torch.save(state, tmp / TRAINING_STATE_FILE)
        (tmp / RESUME_FILE).write_text(info.to_json())
        for filename, content in (extra_json or {}).items():
            (tmp / filename).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def load_trainable_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load the trained tensors and the optimizer state of ``directory``. Every rank calls it.

    The model must already hold the rebuilt base (expanded as recorded); any world size reads
    any world size's checkpoint.

    Args:
        directory (Path): a checkpoint written by ``save_trainable_checkpoint``.
        model (nn.Module): the model of the resumed run.
        optimizer (torch.optim.Optimizer): its optimizer, freshly built.
        state (dict): the checkpoint's ``training_state.pt``.

    Raises:
        ValueError: the checkpoint's tensors are not the model's trainable ones.
    """
    info = TrainableCheckpointInfo.read(directory)
    names = trainable_names(model)
    if names != info.tensors:
        missing = sorted(set(info.tensors) - set(names))[:3]
        extra = sorted(set(names) - set(info.tensors))[:3]
        raise ValueError(
            f"resume checkpoint {directory} holds other trained tensors than this run trains "
            f"(saved, not trained now: {missing}; trained now, not saved: {extra}): resume with "
            "the run's own config"
        )
    flat, optim_state = _flat_state(model, optimizer)
    world = rank_and_world()[1]
    reader = HuggingFaceStorageReader(str(directory))
    _quietly(dcp.load, flat, storage_reader=reader, no_dist=world == 1)
    model_state = {name: flat[f"model.{name}"] for name in names}
    set_model_state_dict(model, model_state, options=dataclasses.replace(_SHARDED, strict=False))
    for fqn, values in state["optimizer_scalars"].items():
        optim_state["state"][fqn].update(values)
    optim_state["param_groups"] = state["optimizer_param_groups"]
    set_optimizer_state_dict(model, optimizer, optim_state, options=_SHARDED)


def read_trainable_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The stored model tensors of a trainable-only checkpoint, whole, in one process.

    Args:
        directory (Path): a checkpoint written by ``save_trainable_checkpoint``.

    Returns:
        dict: torchtune name -> tensor, in the dtype it trained in.
    """
    reader = HuggingFaceStorageReader(str(directory))
    metadata = reader.read_metadata().state_dict_metadata
    wanted = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.items()
        if key.startswith("model.")
    }
    _quietly(
        dcp.load, wanted, storage_reader=HuggingFaceStorageReader(str(directory)), no_dist=True
    )
    return {key.removeprefix("model."): value for key, value in wanted.items()}


def export_hf(directory: Path, output: Path, base_dir: Path | None = None) -> Path:
    """Write a complete Hugging Face checkpoint of a trainable-only resume checkpoint.

    The base (``base_dir``, default: the one recorded in ``resume.json``) is checked against
    the reference, expanded as recorded, and the trained tensors replace their base values;
    the result equals a full save at that step, in the run's dtype.

    Args:
        directory (Path): ``output_dir/checkpoints/step_N``.
        output (Path): the HF directory to write (atomically; replaced if present).
        base_dir (Path | None): the base checkpoint, if it moved since the run.

    Returns:
        Path: ``output``.
    """
    info = TrainableCheckpointInfo.read(directory)
    base = HFCheckpointer(str(base_dir or info.base_dir), str(output.parent))
    check_base_reference(info.base, base, str(directory))
    metadata = load_expansion_metadata(directory)
    state = base.load_state_dict()
    if metadata is not None:
        state = expand_state_dict(state, metadata)
    trainable = trainable_from_json(info.trainable or {})
    trained = {**state, **read_trainable_tensors(directory)}
    saved = trainable.hf_state(trained)
    unknown = sorted(set(saved) - set(state))
    if unknown:
        raise ValueError(f"{directory} holds tensors the rebuilt model lacks: {unknown[:3]}")
    architecture = dataclasses.replace(
        base.architecture, num_layers=info.num_layers, max_seq_len=info.max_seq_len
    )
    return base.save(
        saved,
        architecture,
        output.name,
        dtype=getattr(torch, info.dtype),
        layer_sources=metadata.layer_sources if metadata else None,
        extra_json=expansion_extra_json(metadata) if metadata else None,
        extra_writer=trainable.write_beside(trained, architecture, base.checkpoint_dir),
    )


def _flat_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Trainable tensors and optimizer tensors under one flat namespace (this rank's shards).

    Returns:
        tuple: ``{"model.<fqn>": tensor, "optimizer.<fqn>.<key>": tensor}`` and the optimizer
        state dict they came from (``get_optimizer_state_dict`` initialises a fresh one).
    """
    names = set(trainable_names(model))
    model_state = get_model_state_dict(model, options=_SHARDED)
    flat = {f"model.{k}": v for k, v in model_state.items() if k in names}
    optim_state = get_optimizer_state_dict(model, optimizer, options=_SHARDED)
    for fqn, values in optim_state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                if type(value) not in (torch.Tensor, nn.Parameter, DTensor):
                    raise ValueError(
                        f"optimizer state {fqn}.{key} is a {type(value).__name__}, which a "
                        "trainable-only checkpoint cannot hold: set intermediate_checkpoints=full"
                    )
                flat[f"optimizer.{fqn}.{key}"] = value
    return flat, optim_state


def _scalars(optim_state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Optimizer state values that are not tensors (a Python step count), per parameter."""
    scalars = {
        fqn: {k: v for k, v in values.items() if not isinstance(v, torch.Tensor)}
        for fqn, values in optim_state["state"].items()
    }
    return {fqn: values for fqn, values in scalars.items() if values}


def _quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A checkpoint call without the warning that one process means no process group."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return call(*args, **kwargs)


def _header_digest(path: Path) -> str:
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            head = f.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            data = head + f.read(min(size, 100 * 2**20))
        else:
            data = f.read(2**20)
    return hashlib.sha256(data).hexdigest()
