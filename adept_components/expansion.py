"""S1.4 function-preserving layer expansion and S1.5 the trainable set.

For each selected base layer ``i`` a copy is inserted right after it; later layers shift by
the number of copies inserted before them. The copy clones every tensor of layer ``i`` except
the two projections that write into the residual stream, ``attn.output_proj`` (HF ``o_proj``)
and ``mlp.w2`` (HF ``down_proj``), which are zero. A pre-norm block computes
``h + attn(norm(h))`` then ``h + mlp(norm(h))``; with both projections zero each branch adds
exactly ``0``, so the copy is the identity and the expanded model's logits equal the base
model's bit for bit.

Families whose branches end in a norm (Gemma 3's sandwich norms: ``h + norm(attn(norm(h)))``)
start a copy differently (``copy_fills``): the post-branch norm gains are zero and the
projections are the source's. Zeroed projections would also be exact at step 0, but the norm
turns their first non-zero output into a full-strength branch after one update.

Only the copies train (S1.5). Which layers are copies, and of which source, is an
``ExpansionMetadata`` record saved as ``adept_expansion.json`` beside every checkpoint and read
back on resume. It is never inferred from zero weights: after one optimizer step the
projections are no longer zero (the reference code's bug).

Typical use::

    meta = ExpansionMetadata(base_num_layers=36, source_layers=(26, 28, 29, 30))
    model = expand_model(checkpointer.architecture, meta, max_seq_len=4096)
    model.load_state_dict(expand_state_dict(checkpointer.load_state_dict(), meta))
    print(freeze_all_but(model, meta.copy_positions))
    checkpointer.save(model.state_dict(), architecture_of(model), "step_500",
                      layer_sources=meta.layer_sources, extra_json=expansion_extra_json(meta))
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchtune.modules import TransformerDecoder

from adept_components.models.architecture import ModelArchitecture
from adept_components.models.family import RESIDUAL_WRITERS, ModelFamily

METADATA_FILENAME = "adept_expansion.json"
METADATA_FORMAT_VERSION = 1
# The spec's copy init (S1.4): the two projections that write into the residual stream are zero.
ZERO_INIT_PREFIXES: tuple[str, ...] = RESIDUAL_WRITERS
# How a copy starts: ``auto`` is the family's (``copy_fills``).
COPY_INITS: tuple[str, ...] = ("auto", "zero_out_proj", "zero_post_norm")
# Learning-rate multiplier of a zero_post_norm copy's gains (``gate_units``), measured on
# Gemma 3 270M (BENCHMARKS.md, "Expansion under sandwich norms").
GATE_LR_MULTIPLIER = 100.0
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ExpansionMetadata:
    """Which base layers were copied: everything needed to rebuild or resume an expansion.

    ``source_layers`` is stored sorted as a tuple whatever sequence is passed, and the record
    validates itself on construction, so an instance always describes a possible expansion.

    Attributes:
        base_num_layers (int): ``L``, decoder layers of the base model.
        source_layers (tuple[int, ...]): 0-based base-layer indices that were copied, sorted;
            ``k = len(source_layers)``.

    Raises:
        ValueError: see ``validate``.
    """

    base_num_layers: int
    source_layers: tuple[int, ...]

    def __post_init__(self) -> None:
        layers = self.source_layers
        if isinstance(layers, str) or not isinstance(layers, Iterable):
            raise ValueError(f"source_layers={layers!r} must be a list of layer indices")
        layers = tuple(layers)
        with contextlib.suppress(TypeError):  # mixed types: validate() names the bad entry
            layers = tuple(sorted(layers))
        object.__setattr__(self, "source_layers", layers)
        self.validate()

    @property
    def k(self) -> int:
        """Number of copies."""
        return len(self.source_layers)

    @property
    def num_layers(self) -> int:
        """Decoder layers of the expanded model, ``L + k``."""
        return self.base_num_layers + self.k

    @property
    def copy_positions(self) -> list[int]:
        """Index of each copy in the expanded model, in the order of ``source_layers``.

        Copy ``j`` sits right after its source, which itself moved down by the ``j`` copies
        inserted before it: ``source_layers[j] + j + 1``.
        """
        return [source + j + 1 for j, source in enumerate(self.source_layers)]

    @property
    def original_positions(self) -> list[int]:
        """Index in the expanded model of every base layer, indexed by base layer."""
        sources = set(self.source_layers)
        positions, position = [], 0
        for layer in range(self.base_num_layers):
            positions.append(position)
            position += 2 if layer in sources else 1
        return positions

    @property
    def layer_sources(self) -> list[int]:
        """For every expanded layer, the base layer it descends from (a copy: its source).

        This is the ``layer_sources`` argument of ``HFCheckpointer.save``, which re-indexes
        per-layer config lists (``layer_types``) with it.
        """
        sources = set(self.source_layers)
        out: list[int] = []
        for layer in range(self.base_num_layers):
            out.extend([layer, layer] if layer in sources else [layer])
        return out

    def validate(self) -> None:
        """Check the record describes a possible expansion (spec S1.3 rules).

        Raises:
            ValueError: ``base_num_layers`` is not a positive integer, or ``source_layers``
                has an index out of range, a duplicate, no entries (k = 0) or k >= L.
        """
        num = self.base_num_layers
        if not _is_index(num) or num < 1:
            raise ValueError(f"base_num_layers={num!r} must be a positive integer")
        check_selected_layers(self.source_layers, num, field="source_layers")

    def to_json(self) -> dict[str, Any]:
        """The JSON content of ``adept_expansion.json``.

        Only ``base_num_layers`` and ``source_layers`` define the record; the derived
        positions are written for people reading the file and checked on load.

        Returns:
            dict: JSON-serialisable content.
        """
        return {
            "format_version": METADATA_FORMAT_VERSION,
            "base_num_layers": self.base_num_layers,
            "source_layers": list(self.source_layers),
            "num_layers": self.num_layers,
            "copy_positions": self.copy_positions,
            "layer_sources": self.layer_sources,
        }

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> ExpansionMetadata:
        """Read a record written by ``to_json``.

        Args:
            content (dict): the parsed JSON.

        Returns:
            ExpansionMetadata: the record.

        Raises:
            ValueError: an unknown ``format_version``, a missing field, an invalid record, or
                derived fields that disagree with ``source_layers`` (a hand-edited file).
        """
        version = content.get("format_version")
        if version != METADATA_FORMAT_VERSION:
            raise ValueError(
                f"expansion metadata format_version={version!r} is not supported "
                f"(supported: {METADATA_FORMAT_VERSION})"
            )
        missing = [key for key in ("base_num_layers", "source_layers") if key not in content]
        if missing:
            raise ValueError(f"expansion metadata lacks required field(s) {missing}")
        meta = cls(content["base_num_layers"], content["source_layers"])
        derived = meta.to_json()
        for key in ("num_layers", "copy_positions", "layer_sources"):
            if key in content and content[key] != derived[key]:
                raise ValueError(
                    f"expansion metadata {key}={content[key]} disagrees with "
                    f"source_layers={list(meta.source_layers)} (expected {derived[key]}): "
                    "the file was edited by hand; fix source_layers and drop the derived fields"
                )
        return meta


def check_selected_layers(
    layers: Sequence[int],
    num_layers: int,
    field: str = "layers",
    expanding: bool = True,
) -> list[int]:
    """Validate a list of layer indices: integers in range, no repeats, a valid count (S1.3).

    One check for every layer list: the layers to expand (``expansion.layers``, the
    ``source_layers`` of ``ExpansionMetadata``, a profile's selection) and the layers to train
    (``freeze_all_but``).

    Args:
        layers (Sequence[int]): 0-based layer indices.
        num_layers (int): layers of the model they index.
        field (str): the name the caller knows the list by, for the error message.
        expanding (bool): the layers are base-model layers to copy, so ``1 <= k < L`` (at
            least one layer is not copied); False for layers to train, which may be all ``L``.

    Returns:
        list[int]: the indices, sorted ascending.

    Raises:
        ValueError: an index that is not an integer or is out of range, a duplicate, an empty
            list, or (``expanding``) as many layers as the model has.
    """
    layers = list(layers)
    model = "base model" if expanding else "model"
    bad = [i for i in layers if not (_is_index(i) and 0 <= i < num_layers)]
    if bad:
        raise ValueError(
            f"{field}={layers} but the {model} has {num_layers} layers "
            f"(valid: 0..{num_layers - 1}); bad: {bad}"
        )
    duplicates = sorted({i for i in layers if layers.count(i) > 1})
    if duplicates:
        raise ValueError(f"{field}={layers} repeats layers {duplicates}")
    if expanding and not 1 <= len(layers) < num_layers:
        raise ValueError(
            f"{field}={layers}: k={len(layers)} but k must be in 1..{num_layers - 1} "
            f"for a {num_layers}-layer base model"
        )
    if not layers:
        raise ValueError(
            f"{field}=[] but the model has {num_layers} layers: name at least one of "
            f"0..{num_layers - 1}"
        )
    return sorted(layers)


def uniform_source_layers(num_layers: int, k: int) -> list[int]:
    """LLaMA-Pro's uniform expansion: a copy after the last layer of each of ``k`` groups.

    The ``L`` layers are split into ``k`` consecutive groups of ``L/k`` layers (sizes differ by
    at most one when ``k`` does not divide ``L``, and the last layer is always a source).

    Args:
        num_layers (int): ``L``, layers of the base model.
        k (int): copies to insert, ``1 <= k < L``.

    Returns:
        list[int]: the source layers, e.g. ``[8, 17, 26, 35]`` for ``L=36, k=4``.

    Raises:
        ValueError: ``num_layers`` or ``k`` out of range.
    """
    if not _is_index(num_layers) or num_layers < 2:
        raise ValueError(f"num_layers={num_layers!r} must be an integer >= 2 to expand")
    if not _is_index(k) or not 1 <= k < num_layers:
        raise ValueError(
            f"k={k!r} layers to expand, but the model has {num_layers} layers "
            f"(valid: 1..{num_layers - 1})"
        )
    return [(group + 1) * num_layers // k - 1 for group in range(k)]


def expand_model(
    base: ModelArchitecture | Callable[[], TransformerDecoder],
    metadata: ExpansionMetadata,
    max_seq_len: int | None = None,
) -> TransformerDecoder:
    """Build the ``L + k``-layer decoder an expansion describes (weights not yet loaded).

    From a ``ModelArchitecture`` the deeper model is built directly with
    ``num_layers = L + k``. From a builder (e.g. ``qwen3_8b``) the base is built and each copy
    is a ``deepcopy`` of its source layer inserted after it; modules the base shares between
    layers (the one RoPE module) stay shared, so both routes give the same structure and
    ``state_dict`` keys. Either way the weights are a random initialisation: load
    ``expand_state_dict(...)`` into the result.

    Args:
        base (ModelArchitecture | Callable[[], TransformerDecoder]): the base model's numbers
            (``HFCheckpointer.architecture``) or a zero-argument builder of the base model.
        metadata (ExpansionMetadata): the expansion.
        max_seq_len (int | None): RoPE cache length for a ``ModelArchitecture``; default: its
            own. A builder fixes its own (bind it, ``functools.partial(qwen3_8b,
            max_seq_len=4096)``).

    Returns:
        TransformerDecoder: the expanded model, on the current default device and dtype.

    Raises:
        ValueError: the base model's depth differs from ``metadata.base_num_layers``, or
            ``max_seq_len`` was given with a builder.
    """
    if isinstance(base, ModelArchitecture):
        _check_base_depth(base.num_layers, metadata)
        return base.expanded(metadata.layer_sources).build(max_seq_len)
    if max_seq_len is not None:
        raise ValueError(
            "max_seq_len applies to a ModelArchitecture; a builder fixes its own "
            "(pass functools.partial(builder, max_seq_len=...))"
        )
    model = base()
    _check_base_depth(len(model.layers), metadata)
    layers = list(model.layers)
    shared = _modules_shared_between_layers(layers)
    expanded: list[nn.Module] = []
    sources = set(metadata.source_layers)
    for index, layer in enumerate(layers):
        expanded.append(layer)
        if index in sources:
            # deepcopy's memo maps a shared module to itself, so it is not duplicated.
            expanded.append(copy.deepcopy(layer, memo={id(m): m for m in shared}))
    model.layers = nn.ModuleList(expanded)  # a copy keeps its source's window and RoPE
    # torchtune returns the hidden state *entering* layer i; the input of base layer i is
    # now the input of its new position (the copies are the identity at init).
    positions = metadata.original_positions
    model.output_hidden_states = [positions[i] for i in model.output_hidden_states]
    return model


def resolve_copy_init(family: ModelFamily, copy_init: str = "auto") -> str:
    """The copy init a family gets for ``expansion.copy_init``.

    ``auto``: ``zero_post_norm`` where the family normalises each branch's output (Gemma's
    sandwich norms), else the spec's ``zero_out_proj``. Why: a post-branch norm rescales
    whatever the branch emits to full size, so with zeroed projections the copy is silent
    only until the first update makes them non-zero, and then jumps to a full-strength
    branch (+2.6 nats of general loss after one step on Gemma 3 270M). Zeroing the
    post-norm gains instead keeps the copy exact and lets its output grow with its gains.

    Args:
        family (ModelFamily): the model's family record.
        copy_init (str): ``auto``, ``zero_out_proj`` or ``zero_post_norm``.

    Returns:
        str: ``zero_out_proj`` or ``zero_post_norm``.

    Raises:
        ValueError: an unknown init, or ``zero_post_norm`` for a family without post-branch
            norms.
    """
    if copy_init not in COPY_INITS:
        raise ValueError(f"expansion.copy_init={copy_init!r}; use one of {', '.join(COPY_INITS)}")
    if copy_init == "auto":
        return "zero_post_norm" if family.post_branch_norms else "zero_out_proj"
    if copy_init == "zero_post_norm" and not family.post_branch_norms:
        raise ValueError(
            f"expansion.copy_init=zero_post_norm needs norms on each branch's output, which "
            f"{family.name} does not have: use zero_out_proj (or auto)"
        )
    return copy_init


def copy_fills(family: ModelFamily, copy_init: str = "auto") -> dict[str, float]:
    """What a copy's tensors start as: local-name prefix -> the value of every element.

    Every tensor not named here is a clone of the source's.

    Args:
        family (ModelFamily): the model's family record.
        copy_init (str): ``auto``, ``zero_out_proj`` or ``zero_post_norm``
            (``resolve_copy_init``).

    Returns:
        dict[str, float]: ``{"attn.output_proj.": 0.0, "mlp.w2.": 0.0}`` (the spec) or, for
        ``zero_post_norm``, each post-branch norm at gain zero (``{"sa_scale.": -1.0,
        "mlp_scale.": -1.0}`` for Gemma's ``1 + w`` norms).
    """
    if resolve_copy_init(family, copy_init) == "zero_out_proj":
        return dict.fromkeys(RESIDUAL_WRITERS, 0.0)
    return {f"{name}.": -family.norm_gain_offset for name in family.post_branch_norms}


def gate_units(family: ModelFamily, copy_positions: Sequence[int], copy_init: str) -> list[str]:
    """The units that open a ``zero_post_norm`` copy: its post-branch norm gains.

    Args:
        family (ModelFamily): the model's family record.
        copy_positions (Sequence[int]): the copies' layer indices.
        copy_init (str): the init (``resolve_copy_init``); other inits have no gate units.

    Returns:
        list[str]: unit names, e.g. ``layers.9.sa_scale.scale``.
    """
    if resolve_copy_init(family, copy_init) != "zero_post_norm":
        return []
    return [f"layers.{i}.{name}.scale" for i in copy_positions for name in family.post_branch_norms]


def expand_state_dict(
    base_state: dict[str, torch.Tensor],
    metadata: ExpansionMetadata,
    fills: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Turn a torchtune-named base state dict into the expanded model's (spec S1.4).

    Base layer ``i`` becomes layer ``metadata.original_positions[i]``; the copy of a source
    layer gets a fresh clone of each of its tensors, except those ``fills`` names, which are
    filled with one value (default, the spec: ``attn.output_proj.`` and ``mlp.w2.`` are
    zeros of the same shape, dtype and device; ``copy_fills`` gives a family's).
    Non-layer tensors (embeddings, final norm, output head) keep their names.

    Tensors of base layers and non-layer tensors are the input tensors themselves, re-keyed
    (as in ``hf_to_tune``): cloning them would double the host memory of an 8B model for
    nothing, since ``load_state_dict`` copies into the model's parameters. Copy tensors are
    always new storage, so no two entries of the result share memory and even
    ``load_state_dict(..., assign=True)`` cannot tie a copy to its source.

    Args:
        base_state (dict[str, torch.Tensor]): the base model's tensors in torchtune names
            (``HFCheckpointer.load_state_dict()``); not modified.
        metadata (ExpansionMetadata): the expansion.
        fills (dict[str, float] | None): local-name prefix -> fill value of the copy's
            tensors under it; None: the spec's zeroed output projections.

    Returns:
        dict[str, torch.Tensor]: the expanded model's tensors, in model order (each copy's
        tensors right after its source's).

    Raises:
        ValueError: the state dict's layers are not exactly ``0..L-1`` for
            ``L = metadata.base_num_layers`` (e.g. an already expanded state dict).
    """
    by_layer: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for key, tensor in base_state.items():
        match = _LAYER_KEY.match(key)
        if match:
            by_layer.setdefault(int(match.group(1)), []).append((match.group(2), tensor))
    if sorted(by_layer) != list(range(metadata.base_num_layers)):
        raise ValueError(
            f"the base state dict has layers {_describe_indices(by_layer)} but the expansion "
            f"metadata has base_num_layers={metadata.base_num_layers}: pass the base model's "
            "state dict (an expanded one cannot be expanded again)"
        )
    fills = dict.fromkeys(ZERO_INIT_PREFIXES, 0.0) if fills is None else fills
    positions = metadata.original_positions
    sources = set(metadata.source_layers)
    out: dict[str, torch.Tensor] = {}
    emitted: set[int] = set()
    for key, tensor in base_state.items():
        match = _LAYER_KEY.match(key)
        if not match:
            out[key] = tensor
            continue
        layer = int(match.group(1))
        if layer in emitted:
            continue
        emitted.add(layer)
        for name, value in by_layer[layer]:
            out[f"layers.{positions[layer]}.{name}"] = value
        if layer in sources:
            for name, value in by_layer[layer]:
                fill = next((v for p, v in fills.items() if name.startswith(p)), None)
                out[f"layers.{positions[layer] + 1}.{name}"] = (
                    value.detach().clone() if fill is None else torch.full_like(value, fill)
                )
    return out


def expansion_extra_json(metadata: ExpansionMetadata) -> dict[str, dict[str, Any]]:
    """The ``extra_json`` argument of ``HFCheckpointer.save`` for an expanded model.

    Pair it with ``layer_sources=metadata.layer_sources`` when the checkpointer read the
    *base* model. When it read an already expanded checkpoint (resume), its ``config.json``
    already has ``L + k`` layers: pass ``layer_sources=None`` then, or the per-layer config
    lists would be re-indexed a second time.

    Args:
        metadata (ExpansionMetadata): the expansion.

    Returns:
        dict: ``{"adept_expansion.json": metadata.to_json()}``.
    """
    return {METADATA_FILENAME: metadata.to_json()}


def load_expansion_metadata(checkpoint_dir: str | Path) -> ExpansionMetadata | None:
    """Read the expansion record saved beside a checkpoint.

    Args:
        checkpoint_dir (str | Path): an HF model directory written by ``HFCheckpointer.save``.

    Returns:
        ExpansionMetadata | None: the record; None when the directory holds no
        ``adept_expansion.json`` (a base model, never expanded).

    Raises:
        ValueError: an invalid record, or one whose ``L + k`` differs from the directory's
            ``config.json`` ``num_hidden_layers``.
    """
    directory = Path(checkpoint_dir).expanduser()
    path = directory / METADATA_FILENAME
    if not path.is_file():
        return None
    metadata = ExpansionMetadata.from_json(json.loads(path.read_text()))
    config_file = directory / "config.json"
    if config_file.is_file():
        depth = json.loads(config_file.read_text()).get("num_hidden_layers")
        if depth is not None and depth != metadata.num_layers:
            raise ValueError(
                f"{path} describes {metadata.base_num_layers} + {metadata.k} = "
                f"{metadata.num_layers} layers but {config_file} has num_hidden_layers={depth}"
            )
    return metadata


def _check_base_depth(num_layers: int, metadata: ExpansionMetadata) -> None:
    if num_layers != metadata.base_num_layers:
        raise ValueError(
            f"the base model has {num_layers} layers but the expansion metadata has "
            f"base_num_layers={metadata.base_num_layers}: build the base (unexpanded) model"
        )


def _modules_shared_between_layers(layers: Sequence[nn.Module]) -> list[nn.Module]:
    """Modules that appear in more than one layer (torchtune's builders share one RoPE)."""
    owners: dict[int, tuple[nn.Module, set[int]]] = {}
    for index, layer in enumerate(layers):
        for module in layer.modules():
            owners.setdefault(id(module), (module, set()))[1].add(index)
    return [module for module, seen_in in owners.values() if len(seen_in) > 1]


def _describe_indices(by_layer: dict[int, Any]) -> str:
    indices = sorted(by_layer)
    if not indices:
        return "none"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}..{indices[-1]}"
    return str(indices)
