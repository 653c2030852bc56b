"""What trains: one object owns it, whatever the method.

A method trains one of five things: ADEPT's layer copies, the selected original layers
(``no_stage1``), Spectrum's selected matrices, every weight (``full``) or low-rank adapters
(``lora``). Each is a ``TrainableSet``, and the recipe asks it, never the method's name:

- ``apply(model)``: freeze everything else (adapters are added to the model first);
- ``fp32_modules(model)``: what ``trainable_dtype: fp32`` keeps in fp32;
- ``param_groups(model)``: the optimizer's groups (one per unit when ``per_unit``, the input
  of stage 2's learning-rate scales; otherwise one group);
- ``to_json()`` / ``trainable_from_json``: what a resume checkpoint records, so a resumed run
  and ``adept-cpt export`` rebuild the same set;
- ``hf_state(state)`` and ``write_beside(...)``: what an HF save writes (adapters merged into
  their matrices, so the saved model has the base's names; the adapter alone in PEFT's format
  beside it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn
from torchtune.modules.peft import LoRALinear

from adept_components.expansion import check_selected_layers
from adept_components.models.architecture import ModelArchitecture
from adept_components.models.convert_weights import hf_name, tune_to_hf
from adept_components.optim.unit_groups import clean_param_name, unit_param_groups

# Adapter targets by their Hugging Face (and PEFT) name -> the module inside a torchtune layer.
LORA_TARGETS: dict[str, str] = {
    "q_proj": "attn.q_proj",
    "k_proj": "attn.k_proj",
    "v_proj": "attn.v_proj",
    "o_proj": "attn.output_proj",
    "gate_proj": "mlp.w1",
    "up_proj": "mlp.w3",
    "down_proj": "mlp.w2",
}
ADAPTER_DIR = "adapter"  # the PEFT adapter, inside an HF checkpoint directory
_ADAPTER_PARTS = (".lora_a.", ".lora_b.")


@dataclasses.dataclass(frozen=True)
class TrainableSummary:
    """How much of a model trains.

    Attributes:
        trainable_layers (tuple[int, ...]): indices of the layers holding a trained parameter.
        trainable_params (int): elements of the parameters with ``requires_grad``.
        total_params (int): elements of all parameters (a tied head counted once).
    """

    trainable_layers: tuple[int, ...]
    trainable_params: int
    total_params: int

    @classmethod
    def of(cls, model: nn.Module) -> TrainableSummary:
        """Count what ``model`` trains now (``requires_grad``)."""
        named = dict(model.named_parameters())  # de-duplicated: a shared tensor counted once
        layers = {
            int(parts[1])
            for name, p in named.items()
            if p.requires_grad and (parts := clean_param_name(name).split("."))[0] == "layers"
        }
        return cls(
            trainable_layers=tuple(sorted(layers)),
            trainable_params=sum(p.numel() for p in named.values() if p.requires_grad),
            total_params=sum(p.numel() for p in named.values()),
        )

    @property
    def share(self) -> float:
        """Trainable fraction of all parameters, in [0, 1]."""
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def __str__(self) -> str:
        return (
            f"trainable: {self.trainable_params:,} / {self.total_params:,} "
            f"({100 * self.share:.2f}%)"
        )


def freeze_all_but(model: nn.Module, trainable_layers: Sequence[int]) -> TrainableSummary:
    """Make only the given decoder layers trainable (spec S1.5: the copies).

    Every parameter of those layers (projections and norms) gets ``requires_grad=True``;
    everything else, embeddings, the other layers, the final norm and the output head, gets
    ``False``. A tied head (``TiedLinear``) holds no parameter of its own, it reads
    ``tok_embeddings.weight``, so it is frozen with the embeddings. Call it before building
    the optimizer and before FSDP sharding (``fully_shard`` keeps ``requires_grad``).

    Args:
        model (nn.Module): a torchtune decoder (``model.layers`` is its layer list).
        trainable_layers (Sequence[int]): layer indices, e.g. ``metadata.copy_positions``.

    Returns:
        TrainableSummary: the trainable and total parameter counts.

    Raises:
        ValueError: no layer given, an index out of range, or a duplicate.
    """
    layers = check_selected_layers(
        trainable_layers, len(model.layers), field="trainable_layers", expanding=False
    )
    model.requires_grad_(False)
    for index in layers:
        model.layers[index].requires_grad_(True)
    return TrainableSummary.of(model)


def freeze_all_but_parameters(model: nn.Module, names: Sequence[str]) -> TrainableSummary:
    """Make only the named parameters trainable (Spectrum's selected matrices).

    Args:
        model (nn.Module): a torchtune decoder.
        names (Sequence[str]): parameter names (``layers.3.attn.q_proj.weight``).

    Returns:
        TrainableSummary: the layers holding a trained parameter and the counts.

    Raises:
        ValueError: a name the model does not have, or no name.
    """
    own = dict(model.named_parameters())
    unknown = [name for name in names if name not in own]
    if unknown or not names:
        raise ValueError(f"parameters to train {unknown[:3] or '[]'} are not the model's")
    model.requires_grad_(False)
    for name in names:
        own[name].requires_grad_(True)
    return TrainableSummary.of(model)


class TrainableSet:
    """Which parameters train, how they group, what resume records and what an HF save holds.

    Subclasses set ``kind`` (the name recorded in checkpoints) and ``per_unit``.
    """

    kind: ClassVar[str]
    per_unit: ClassVar[bool] = False  # one optimizer group per unit (stage 2's scales)

    def apply(self, model: nn.Module) -> TrainableSummary:
        """Make exactly this set trainable (adding modules it needs); freeze the rest."""
        raise NotImplementedError

    def fp32_modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules whose parameters ``trainable_dtype: fp32`` keeps in fp32."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The optimizer's param groups, built by name after any sharding or wrapping.

        Returns:
            list[dict]: one group of every trainable parameter (``per_unit``: one per unit).
        """
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def describe(self) -> str:
        """What trains, for the run's log."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The record a resume checkpoint keeps (``trainable_from_json`` reads it)."""
        return {"kind": self.kind, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    def hf_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors an HF checkpoint holds, from the model's full state dict."""
        return state

    def write_beside(
        self,
        state: dict[str, torch.Tensor],
        architecture: ModelArchitecture,
        base_dir: str | Path,
    ) -> Callable[[Path], None] | None:
        """Files written into an HF checkpoint beside the model (None: nothing more)."""
        return None


@dataclasses.dataclass(frozen=True)
class Everything(TrainableSet):
    """Every weight trains (``method=full``)."""

    kind: ClassVar[str] = "all"

    def apply(self, model: nn.Module) -> TrainableSummary:
        model.requires_grad_(True)
        return TrainableSummary.of(model)

    def fp32_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model]  # the whole model in fp32 under autocast: torch's mixed precision

    def describe(self) -> str:
        return "all weights"


@dataclasses.dataclass(frozen=True)
class Layers(TrainableSet):
    """Whole decoder layers train, each tensor a unit: the copies, or selected originals.

    Attributes:
        layers (tuple[int, ...]): positions in ``model.layers``.
    """

    layers: tuple[int, ...]
    kind: ClassVar[str] = "layers"
    per_unit: ClassVar[bool] = True

    def apply(self, model: nn.Module) -> TrainableSummary:
        return freeze_all_but(model, self.layers)

    def fp32_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.layers[i] for i in self.layers]

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return unit_param_groups(model, self.layers)

    def describe(self) -> str:
        return f"layers {list(self.layers)}"


@dataclasses.dataclass(frozen=True)
class Matrices(TrainableSet):
    """Named weight matrices train (Spectrum's top-SNR share of each kind).

    Attributes:
        names (tuple[str, ...]): parameter names (``layers.3.attn.q_proj.weight``).
    """

    names: tuple[str, ...]
    kind: ClassVar[str] = "matrices"

    def apply(self, model: nn.Module) -> TrainableSummary:
        return freeze_all_but_parameters(model, self.names)

    def fp32_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.get_submodule(name.rsplit(".", 1)[0]) for name in self.names]

    def describe(self) -> str:
        return f"{len(self.names)} matrices"


@dataclasses.dataclass(frozen=True)
class Adapters(TrainableSet):
    """Low-rank adapters (LoRA) on linear layers of every block; nothing else trains.

    Each target becomes torchtune's ``LoRALinear``: the frozen weight W plus
    ``(alpha / rank) * B @ A``, A Kaiming-uniform (seeded), B zero, so the model computes the
    base model exactly until B moves. An HF save holds ``W + (alpha / rank) * B @ A`` under the
    base's names, and the adapter alone in PEFT's format in ``adapter/``.

    Attributes:
        targets (tuple[str, ...]): HF names of the adapted linears (``LORA_TARGETS``).
        rank (int): r.
        alpha (float): the scale's numerator.
        dropout (float): dropout on the adapters' input, in [0, 1).
        seed (int): seeds the A matrices (every rank draws the same).
    """

    targets: tuple[str, ...]
    rank: int
    alpha: float
    dropout: float = 0.0
    seed: int = 0
    kind: ClassVar[str] = "adapters"

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def apply(self, model: nn.Module) -> TrainableSummary:
        check_adapter_rank(model, self.targets, self.rank)
        generator = torch.Generator().manual_seed(self.seed)
        for layer in model.layers:
            for target in self.targets:
                path = LORA_TARGETS[target]
                parent, _, leaf = path.rpartition(".")
                owner = layer.get_submodule(parent)
                linear = getattr(owner, leaf)
                setattr(owner, leaf, self._adapted(linear, generator))
        model.requires_grad_(False)
        for module in self._adapted_modules(model):
            module.lora_a.requires_grad_(True)
            module.lora_b.requires_grad_(True)
        return TrainableSummary.of(model)

    def _adapted(self, linear: nn.Module, generator: torch.Generator) -> LoRALinear:
        """``linear``'s weight (the same tensor) inside a ``LoRALinear`` with fresh A, B."""
        if isinstance(linear, LoRALinear):
            raise ValueError("the model already has adapters; apply an Adapters set once")
        if getattr(linear, "bias", None) is not None:
            raise ValueError(
                "lora.targets: a target linear has a bias, which these adapters do not carry "
                "into the merged checkpoint; no supported family has one"
            )
        weight = linear.weight
        out_dim, in_dim = weight.shape
        with torch.device("meta"):
            module = LoRALinear(in_dim, out_dim, self.rank, self.alpha, self.dropout)
        module.weight = weight
        a = torch.empty(self.rank, in_dim)
        # LoRALinear's own init (loralib's), drawn from the set's generator.
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        module.lora_a.weight = nn.Parameter(a.to(device=weight.device, dtype=weight.dtype))
        module.lora_b.weight = nn.Parameter(
            torch.zeros(out_dim, self.rank, device=weight.device, dtype=weight.dtype)
        )
        return module

    @staticmethod
    def _adapted_modules(model: nn.Module) -> list[LoRALinear]:
        return [m for m in model.modules() if isinstance(m, LoRALinear)]

    def fp32_modules(self, model: nn.Module) -> list[nn.Module]:
        return [part for m in self._adapted_modules(model) for part in (m.lora_a, m.lora_b)]

    def describe(self) -> str:
        return (
            f"LoRA adapters (rank {self.rank}, alpha {self.alpha:g}) on "
            f"{', '.join(self.targets)} of every layer"
        )

    def hf_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """W + (alpha / rank) B A for every adapted matrix (in fp32, then W's dtype)."""
        merged = {k: v for k, v in state.items() if not any(p in k for p in _ADAPTER_PARTS)}
        for name, a in state.items():
            if name.endswith(".lora_a.weight"):
                prefix = name.removesuffix("lora_a.weight")
                weight, b = state[f"{prefix}weight"], state[f"{prefix}lora_b.weight"]
                delta = self.scale * (b.float() @ a.float())
                merged[f"{prefix}weight"] = (weight.float() + delta).to(weight.dtype)
        return merged

    def write_beside(
        self,
        state: dict[str, torch.Tensor],
        architecture: ModelArchitecture,
        base_dir: str | Path,
    ) -> Callable[[Path], None] | None:
        """``adapter/``: ``adapter_config.json`` and ``adapter_model.safetensors``, which
        ``peft.PeftModel.from_pretrained(base_model, DIR/adapter)`` loads."""
        tensors = self.peft_tensors(state, architecture)
        config = self.peft_config(str(base_dir))

        def write(directory: Path) -> None:
            target = directory / ADAPTER_DIR
            target.mkdir()
            save_file(tensors, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
            (target / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")

        return write

    def peft_tensors(
        self, state: dict[str, torch.Tensor], architecture: ModelArchitecture
    ) -> dict[str, torch.Tensor]:
        """The adapters under PEFT's names (``base_model.model.<HF module>.lora_A.weight``).

        B's rows follow the HF layout of their matrix: Llama's q/k rows are permuted between
        torchtune and HF, and a row permutation of ``W + sBA`` is one of B's rows.
        """
        by_rank = dataclasses.replace(architecture, embed_dim=self.rank)  # B is [out, rank]
        tensors = {}
        for name, a in state.items():
            if not name.endswith(".lora_a.weight"):
                continue
            weight_name = f"{name.removesuffix('lora_a.weight')}weight"
            b = state[weight_name.removesuffix("weight") + "lora_b.weight"]
            ((key, b_hf),) = tune_to_hf({weight_name: b}, by_rank).items()
            assert key == hf_name(weight_name, architecture.family)
            module = f"base_model.model.{key.removesuffix('.weight')}"
            tensors[f"{module}.lora_A.weight"] = a.contiguous()
            tensors[f"{module}.lora_B.weight"] = b_hf.contiguous()
        return tensors

    def peft_config(self, base_dir: str) -> dict[str, Any]:
        """PEFT's ``LoraConfig`` of these adapters, as ``adapter_config.json``."""
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_dir,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": sorted(self.targets),
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "use_rslora": False,
            "use_dora": False,
            "modules_to_save": None,
            "layers_to_transform": None,
            "inference_mode": True,
        }


KINDS: dict[str, type[TrainableSet]] = {
    cls.kind: cls for cls in (Everything, Layers, Matrices, Adapters)
}


def trainable_from_json(record: dict[str, Any]) -> TrainableSet:
    """Rebuild a set from ``TrainableSet.to_json()`` (a resume checkpoint's record).

    A training state written before the record existed holds ``trainable_layers`` and
    ``trainable_matrices`` instead; those are read too.

    Raises:
        ValueError: an unknown kind or fields.
    """
    if "kind" not in record:
        if record.get("trainable_matrices"):
            return Matrices(tuple(record["trainable_matrices"]))
        layers = record.get("trainable_layers")
        return Layers(tuple(layers)) if layers else Everything()
    fields = dict(record)
    kind = fields.pop("kind")
    if kind not in KINDS:
        raise ValueError(f"trainable set {kind!r} is not one of {sorted(KINDS)}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return KINDS[kind](**fields)


def target_shapes(model: nn.Module, targets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(out, in) of each target in the first layer (every layer of a family has the same)."""
    layer = model.layers[0]
    return {t: tuple(layer.get_submodule(LORA_TARGETS[t]).weight.shape) for t in targets}


def check_adapter_rank(model: nn.Module, targets: Sequence[str], rank: int) -> None:
    """Refuse a rank no larger than useful: above a target's smaller dimension.

    Raises:
        ValueError: naming ``lora.rank``, the target and its shape.
    """
    for target, (out_dim, in_dim) in target_shapes(model, targets).items():
        if rank > min(out_dim, in_dim):
            raise ValueError(
                f"lora.rank={rank} is larger than {target}'s smaller dimension "
                f"({out_dim} x {in_dim}); use a rank of at most {min(out_dim, in_dim)}"
            )


@dataclasses.dataclass(frozen=True)
class RankMatch:
    """``lora.rank: match``: the rank whose adapters count closest to ADEPT's k copies.

    Attributes:
        rank (int): the chosen rank.
        adapter_params (int): what adapters of that rank train.
        copy_params (int): what ADEPT trains with k copies (k layers' parameters).
    """

    rank: int
    adapter_params: int
    copy_params: int

    @property
    def ratio(self) -> float:
        return self.adapter_params / self.copy_params


def adapter_params(model: nn.Module, targets: Sequence[str], rank: int) -> int:
    """Parameters that rank-``rank`` adapters on ``targets`` of every layer train."""
    per_layer = sum(o + i for o, i in target_shapes(model, targets).values())
    return len(model.layers) * per_layer * rank


def match_rank(model: nn.Module, targets: Sequence[str], k: int) -> RankMatch:
    """The rank whose adapter count is closest to what ADEPT trains with ``k`` copies.

    A copy has its source layer's parameters (every layer of a family has the same count), so
    ADEPT trains ``k`` layers' worth; adapters train ``rank * L * sum(in + out)``.

    Args:
        model (nn.Module): the base decoder (any device, meta included).
        targets (Sequence[str]): the adapted linears.
        k (int): ``expansion.num_layers``.

    Returns:
        RankMatch: the rank (at least 1) and both counts.
    """
    copies = k * sum(p.numel() for p in model.layers[0].parameters())
    per_rank = adapter_params(model, targets, 1)
    rank = max(1, round(copies / per_rank))
    return RankMatch(rank, per_rank * rank, copies)
