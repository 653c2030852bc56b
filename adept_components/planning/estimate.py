"""Size a run before it starts: parameters, memory per GPU, FLOPs and time of every method.

``adept-cpt plan`` answers "will this config fit, and how long will it take?" on a laptop,
from the config alone: the model is built on the meta device (no weights), expanded and
frozen by the project's own ``expand_model`` and ``TrainableSet`` exactly as the recipe would
for each row of the method table, and one micro-batch is walked op by op
(``planning.activations``) for its activation memory and FLOPs.

Memory per GPU at the peak of a step is the resident state plus the most one micro-batch's
forward and backward hold at once, or the optimizer step's temporaries::

    resident   weights (the trained ones in fp32 with trainable_dtype: fp32) + RoPE buffers
               + optimizer state (AdamW: exp_avg and exp_avg_sq in the trained weights'
                 dtype, and a 0-d fp32 step per tensor)
               + gradients, from the second micro-batch of gradient accumulation on
    micro-batch  saved activations, gradients of activations, parameter gradients as the
               backward writes them, op temporaries (``activations.micro_batch``)
    optimizer  every gradient + AdamW's temporary sqrt(exp_avg_sq): per param group with
               foreach (CUDA's default), per tensor otherwise (CPU)

Over N GPUs the recipe shards with FSDP2 (one unit per decoder layer): weights, gradients and
optimizer state divide by N, while the root module's parameters (embeddings, final norm, head)
and two decoder layers (the current one and the prefetched next) are gathered whole, and one
layer's gradients exist whole before their reduce-scatter; the head is then not deferred (the
recipe keeps chunked logits under FSDP). Activations do not shard: each GPU runs its own
``batch_size`` sequences.

What is not counted: the CUDA context and allocator fragmentation (plan 1-3 GiB), NCCL
buffers, the stage 1 probe and the canary (they run without gradients, on the unsharded base
model for the probe: ``2 x`` the weights in the run's dtype on every rank).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchtune import config as tt_config

from adept_components.config import ConfigError, RunPlan, named_errors
from adept_components.expansion import ExpansionMetadata, expand_model, uniform_source_layers
from adept_components.importance import (
    check_profile_matches,
    read_profile,
    select_layers,
    spectrum_selection,
)
from adept_components.losses import ChunkedHeadCrossEntropy
from adept_components.models.architecture import ModelArchitecture, config_path, read_hf_config
from adept_components.planning.activations import MicroBatch, Precision, micro_batch
from adept_components.trainable import (
    LORA_TARGETS,
    Adapters,
    Everything,
    Layers,
    Matrices,
    TrainableSet,
    check_adapter_rank,
    match_rank,
)

GIB = 2**30
# Optimizer classes by name -> (states per trained element, bytes per state element; None:
# the parameter's dtype). torchao's low-bit AdamW keep their states in 8/4 bits (+ scales).
_OPTIMIZER_STATES: dict[str, tuple[int, float | None]] = {
    "AdamW": (2, None),
    "Adam": (2, None),
    "AdamW8bit": (2, 1.0),
    "AdamW4bit": (2, 0.5),
    "AdamWFp8": (2, 1.0),
}


@dataclasses.dataclass(frozen=True)
class Batching:
    """What one optimizer step processes on each GPU.

    Attributes:
        batch_size (int): sequences per micro-batch per GPU.
        grad_accum (int): micro-batches per optimizer step.
        seq_len (int): tokens per sequence (``dataset.max_seq_len``).
        activation_checkpointing (bool): every decoder layer recomputed in the backward.
    """

    batch_size: int
    grad_accum: int
    seq_len: int
    activation_checkpointing: bool

    def tokens(self, gpus: int) -> int:
        """Tokens of one optimizer step over ``gpus`` GPUs."""
        return self.batch_size * self.grad_accum * self.seq_len * gpus


@dataclasses.dataclass(frozen=True)
class SizedModel:
    """One method's model as the recipe would train it, built on the meta device.

    Attributes:
        method (str): the method's name.
        model (nn.Module): the (expanded) decoder, exactly its trained parameters requiring
            grad.
        base_layers (int): decoder layers before expansion.
        trains (str): what trains, as the recipe logs it (``TrainableSet.describe``).
        positions (tuple[int, ...] | None): trained layer positions; None: every weight or
            Spectrum/LoRA (see ``trains``).
        placeholder (str | None): why the positions are stand-ins, when a probe (or an SNR,
            or a random seed) would choose them at run time.
        total_params (int): parameters (a tied head once).
        trainable_params (int): trained parameters.
        param_groups (int): optimizer param groups (one per unit with per-unit learning rates).
        precision (Precision): the run's dtype and the modules kept in fp32.
    """

    method: str
    model: nn.Module
    base_layers: int
    trains: str
    positions: tuple[int, ...] | None
    placeholder: str | None
    total_params: int
    trainable_params: int
    param_groups: int
    precision: Precision

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per GPU at the peak of a step.

    Attributes:
        weights (int): parameters (sharded share under FSDP) and RoPE buffers.
        gathered (int): FSDP2's unsharded root and two layers (0 on one GPU).
        grads (int): parameter gradients (sharded share), plus one layer gathered under FSDP.
        optimizer (int): optimizer state (sharded share).
        activations (int): the most one micro-batch's activations take at once in its
            forward and backward (saved tensors, their gradients, op temporaries).
        optimizer_temp (int): the optimizer step's temporaries.
        peak (int): the step's peak.
    """

    weights: int
    gathered: int
    grads: int
    optimizer: int
    activations: int
    optimizer_temp: int
    peak: int


@dataclasses.dataclass(frozen=True)
class MethodEstimate:
    """One method under one batching on some GPUs.

    Attributes:
        sized (SizedModel): the model.
        memory (Memory): with the batching's activation checkpointing.
        activations_off (int), activations_on (int): activation memory without and with
            activation checkpointing.
        flops_per_step (float): model FLOPs of one optimizer step over all GPUs.
        recompute_per_step (float): FLOPs spent recomputing, over all GPUs.
    """

    sized: SizedModel
    memory: Memory
    activations_off: int
    activations_on: int
    flops_per_step: float
    recompute_per_step: float


@dataclasses.dataclass(frozen=True)
class Fix:
    """The smallest change that makes a run fit.

    Attributes:
        overrides (tuple[str, ...]): ``key=value`` to add to the command line.
        gpus (int): GPUs needed (the same as asked unless more are needed).
        estimate (MethodEstimate): the run with the change.
        tokens_per_step (int): tokens per optimizer step with the change.
    """

    overrides: tuple[str, ...]
    gpus: int
    estimate: MethodEstimate
    tokens_per_step: int


class Planner:
    """Estimates for one run plan: every method, any batching and GPU count.

    Args:
        plans (dict[str, RunPlan | ConfigError]): the config with each method of the table
            (``method=NAME``); an error for a method the config cannot run.
        method (str): the config's own method.
        device (str): where the run will train (``cuda``; ``cpu`` for a CPU run).
        build (Callable[[], nn.Module]): builds the base decoder (called on the meta device).
        loss (object): the recipe's loss (``ChunkedHeadCrossEntropy`` defers the head).

    Raises:
        ConfigError: the config's own method cannot be sized (bad depth, bad profile, ...).
    """

    def __init__(
        self,
        plans: dict[str, RunPlan | ConfigError],
        method: str,
        device: str,
        build: Callable[[], nn.Module],
        loss: object,
    ) -> None:
        self.plan = plans[method]
        self.method = method
        self.device = device
        self.loss = loss
        self.sized: dict[str, SizedModel | ConfigError] = {}
        for name, plan in plans.items():
            if isinstance(plan, ConfigError):
                self.sized[name] = plan
                continue
            try:
                self.sized[name] = size_method(plan, build)
            except ConfigError as e:
                if name == method:
                    raise
                self.sized[name] = e
        seq_len = self.plan.seq_lens.get("dataset.max_seq_len")
        if seq_len is None:
            raise ConfigError(
                "dataset.max_seq_len is missing: the planner needs the sequence length"
            )
        train = self.plan.train
        self.batching = Batching(
            train.batch_size, train.grad_accum, seq_len, train.activation_checkpointing
        )
        self.defers_head = bool(getattr(loss, "defers_head", False))
        self._cache: dict[tuple, MicroBatch] = {}

    def _micro_batch(
        self, method: str, batching: Batching, checkpointing: bool, distributed: bool,
        resident: bool,
    ) -> MicroBatch:  # fmt: skip
        key = (method, batching.batch_size, batching.seq_len, checkpointing, distributed, resident)
        if key not in self._cache:
            sized = self.sized[method]
            self._cache[key] = micro_batch(
                sized.model,
                batching.batch_size,
                batching.seq_len,
                sized.precision,
                defer_head=self.defers_head and not distributed,
                num_output_chunks=getattr(self.loss, "num_output_chunks", 0),
                activation_checkpointing=checkpointing,
                grads_resident=resident,
            )
        return self._cache[key]

    def estimate(self, method: str, batching: Batching, gpus: int) -> MethodEstimate:
        """Memory per GPU, FLOPs per step of ``method`` under ``batching`` on ``gpus`` GPUs.

        Args:
            method (str): a method whose model could be sized (``sized[method]`` is no error).
            batching (Batching): batch, accumulation, sequence length, checkpointing.
            gpus (int): GPUs (FSDP2 over more than one).

        Returns:
            MethodEstimate: the numbers.
        """
        sized = self.sized[method]
        assert isinstance(sized, SizedModel), sized
        distributed = gpus > 1
        checkpointing = batching.activation_checkpointing
        first = self._micro_batch(method, batching, checkpointing, distributed, False)
        static = _static_bytes(sized, self.plan, self.device)
        shard = gpus if distributed else 1
        weights = math.ceil(static.weights / shard) + static.buffers
        grads = math.ceil(static.grads / shard)
        optimizer = math.ceil(static.optimizer / shard)
        gathered = static.gathered if distributed else 0
        grads_whole = static.layer_grads if distributed else 0
        resident = weights + gathered + optimizer
        activations = first.activation_bytes
        if not distributed:  # parameter gradients as the backward writes them
            peaks = [resident + first.peak_bytes]
        else:  # each layer's reduce-scattered as soon as it exists: one layer whole at a time
            peaks = [resident + activations + grads + grads_whole]
        if batching.grad_accum > 1:  # from the second micro-batch on, every gradient exists
            later = self._micro_batch(method, batching, checkpointing, distributed, True)
            peaks.append(resident + grads + grads_whole + later.peak_bytes)
            activations = max(activations, later.activation_bytes)
        optimizer_temp = math.ceil(static.optimizer_temp / shard)
        peaks.append(weights + optimizer + grads + optimizer_temp)
        memory = Memory(
            weights=weights,
            gathered=gathered,
            grads=grads + grads_whole,
            optimizer=optimizer,
            activations=activations,
            optimizer_temp=optimizer_temp,
            peak=max(peaks),
        )
        other = self._micro_batch(method, batching, not checkpointing, distributed, False)
        off, on = (other, first) if checkpointing else (first, other)
        steps = batching.grad_accum * gpus
        return MethodEstimate(
            sized=sized,
            memory=memory,
            activations_off=off.activation_bytes,
            activations_on=on.activation_bytes,
            flops_per_step=first.flops * steps,
            recompute_per_step=first.recompute_flops * steps,
        )

    def fix(self, batching: Batching, gpus: int, memory_bytes: float) -> Fix | None:
        """The smallest change that fits ``memory_bytes`` per GPU, tried in order.

        1. activation checkpointing on; 2. then a smaller ``batch_size`` with a larger
        ``gradient_accumulation_steps`` (tokens per step unchanged); 3. then more GPUs (at the
        configured batch size, else at batch size 1), accumulation lowered to keep the
        tokens per step where it divides.

        Args:
            batching (Batching): the config's.
            gpus (int): GPUs asked for.
            memory_bytes (float): memory per GPU.

        Returns:
            Fix | None: the change, or None when even 4096 GPUs at batch size 1 do not fit.
        """
        method, overrides = self.method, []
        tokens = batching.tokens(gpus)
        if not batching.activation_checkpointing:
            batching = dataclasses.replace(batching, activation_checkpointing=True)
            overrides.append("enable_activation_checkpointing=true")
            found = self.estimate(method, batching, gpus)
            if found.memory.peak <= memory_bytes:
                return Fix(tuple(overrides), gpus, found, tokens)
        sequences = batching.batch_size * batching.grad_accum
        for size in range(batching.batch_size - 1, 0, -1):
            if sequences % size:
                continue
            smaller = dataclasses.replace(batching, batch_size=size, grad_accum=sequences // size)
            found = self.estimate(method, smaller, gpus)
            if found.memory.peak <= memory_bytes:
                change = (f"batch_size={size}", f"gradient_accumulation_steps={sequences // size}")
                return Fix((*overrides, *change), gpus, found, tokens)
        for size in dict.fromkeys((batching.batch_size, 1)):
            more = self._fewest_gpus(batching, size, gpus, memory_bytes)
            if more is None:
                continue
            wider = self._spread(batching, size, gpus, more)
            change = [f"batch_size={size}"] if size != batching.batch_size else []
            if wider.grad_accum != batching.grad_accum:
                change.append(f"gradient_accumulation_steps={wider.grad_accum}")
            found = self.estimate(method, wider, more)
            return Fix((*overrides, *change), more, found, wider.tokens(more))
        return None

    @staticmethod
    def _spread(batching: Batching, batch_size: int, gpus: int, more: int) -> Batching:
        """The batching on ``more`` GPUs closest to the same tokens per step."""
        sequences = batching.batch_size * batching.grad_accum * gpus
        accum = max(1, round(sequences / (batch_size * more)))
        return dataclasses.replace(batching, batch_size=batch_size, grad_accum=accum)

    def _fewest_gpus(
        self, batching: Batching, batch_size: int, gpus: int, memory_bytes: float
    ) -> int | None:
        """Fewest GPUs above ``gpus`` that fit (memory falls as GPUs grow: bisect)."""

        def fits(count: int) -> bool:
            trial = self._spread(batching, batch_size, gpus, count)
            return self.estimate(self.method, trial, count).memory.peak <= memory_bytes

        low, high = gpus, 4096
        if not fits(high):
            return None
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle, high)
        # Up to twice as many, the fewest that keeps the tokens per step exactly.
        sequences = batching.batch_size * batching.grad_accum * gpus
        for count in range(high, 2 * high + 1):
            if sequences % (batch_size * count) == 0 and fits(count):
                return count
        return high


@dataclasses.dataclass(frozen=True)
class _Static:
    """Bytes of what a run keeps for its whole length, unsharded."""

    weights: int
    buffers: int
    grads: int
    optimizer: int
    optimizer_temp: int
    gathered: int
    layer_grads: int


def _static_bytes(sized: SizedModel, plan: RunPlan, device: str) -> _Static:
    """Weights, gradients, optimizer state and the optimizer step's temporaries."""
    model, precision = sized.model, sized.precision
    fp32 = _fp32_parameters(model, precision)

    def nbytes(p: nn.Parameter) -> int:
        return p.numel() * (4 if id(p) in fp32 else precision.dtype_bytes)

    params = dict(model.named_parameters())
    trained = [p for p in params.values() if p.requires_grad]
    buffers = sum(b.numel() * b.element_size() for _, b in model.named_buffers())
    states, state_bytes = optimizer_states(plan)
    per_state = (
        (lambda p: nbytes(p)) if state_bytes is None else (lambda p: p.numel() * state_bytes)
    )
    optimizer = sum(states * per_state(p) + 4 for p in trained)  # + a 0-d fp32 step
    groups = _group_sizes(sized, trained, nbytes)
    kwargs = plan.optimizer.kwargs
    if kwargs.get("fused"):
        temp = 0
    elif kwargs.get("foreach", device.startswith("cuda")):
        temp = max(groups, default=0)  # _foreach_sqrt(exp_avg_sq) of one group
    else:
        temp = 2 * max((nbytes(p) for p in trained), default=0)  # sqrt, then / bias correction
    root = sum(nbytes(p) for name, p in params.items() if not name.startswith("layers."))
    layer = max((sum(nbytes(p) for p in m.parameters()) for m in model.layers), default=0)
    layer_grads = max(
        (sum(nbytes(p) for p in m.parameters() if p.requires_grad) for m in model.layers),
        default=0,
    )
    return _Static(
        weights=sum(nbytes(p) for p in params.values()),
        buffers=buffers,
        grads=sum(nbytes(p) for p in trained),
        optimizer=optimizer,
        optimizer_temp=temp,
        gathered=root + 2 * layer,
        layer_grads=layer_grads,
    )


def _group_sizes(sized: SizedModel, trained: list[nn.Parameter], nbytes) -> list[int]:
    """Bytes of each optimizer param group (one per unit, or one group of everything)."""
    if sized.param_groups > 1:
        return [nbytes(p) for p in trained]
    return [sum(nbytes(p) for p in trained)]


def _fp32_parameters(model: nn.Module, precision: Precision) -> set[int]:
    """``id`` of the parameters that ``trainable_dtype: fp32`` keeps in fp32."""
    return {
        id(p) for m in model.modules() if id(m) in precision.fp32_modules for p in m.parameters()
    }


def optimizer_states(plan: RunPlan) -> tuple[int, float | None]:
    """What the optimizer keeps per trained element: AdamW two states in the weight's dtype.

    Args:
        plan (RunPlan): the run plan (its optimizer class and arguments).

    Returns:
        tuple: states per trained element, and bytes per state element (None: the trained
        weight's own dtype). An unknown optimizer is assumed to keep AdamW's two.
    """
    name = plan.optimizer.cls.__name__
    if name == "SGD":
        return (1 if plan.optimizer.kwargs.get("momentum") else 0), None
    states, nbytes = _OPTIMIZER_STATES.get(name, (2, None))
    if plan.optimizer.kwargs.get("amsgrad"):
        states += 1
    return states, nbytes


# ------------------------------------------------------------------------- the model


def base_builder(plan: RunPlan) -> tuple[Callable[[], nn.Module], str]:
    """How to build the base decoder: from the checkpoint's config.json when there is one.

    Args:
        plan (RunPlan): the run plan.

    Returns:
        tuple: a zero-argument builder (call it under ``torch.device("meta")``) and a line
        saying where the architecture came from.

    Raises:
        ConfigError: an unreadable config.json (naming ``checkpointer.checkpoint_dir``).
    """
    directory = Path(str(plan.checkpointer.get("checkpoint_dir") or "")).expanduser()
    if (directory / "config.json").is_file():
        config = named_errors("checkpointer.checkpoint_dir", read_hf_config, directory)
        architecture = named_errors(
            "checkpointer.checkpoint_dir",
            ModelArchitecture.from_hf_config,
            config,
            config_path(directory),
        )
        max_seq_len = plan.model.get("max_seq_len")
        return (
            functools.partial(architecture.build, max_seq_len),
            f"{config_path(directory)} ({architecture.family})",
        )
    component = plan.model.get("_component_")
    return (
        functools.partial(named_errors, "model", tt_config.instantiate, plan.model),
        f"{component} (checkpointer.checkpoint_dir={directory} has no config.json)",
    )


def recipe_loss(plan: RunPlan) -> object:
    """The recipe's loss: the config's ``loss`` section, or ``ChunkedHeadCrossEntropy()``.

    Raises:
        ConfigError: a ``loss`` section that cannot be built.
    """
    if plan.train.loss is None:
        return ChunkedHeadCrossEntropy()
    return named_errors("loss", tt_config.instantiate, plan.train.loss)


def size_method(plan: RunPlan, build: Callable[[], nn.Module]) -> SizedModel:
    """Build ``plan``'s model on the meta device as the recipe trains it.

    The recipe's stage 1 in order: select layers (the explicit list, the saved profile, the
    uniform or seeded random choice; a stand-in where a probe or the weights' SNR would
    choose), expand with ``expand_model``, then apply the method's ``TrainableSet``.

    Args:
        plan (RunPlan): the plan of one method.
        build (Callable[[], nn.Module]): builds the base decoder.

    Returns:
        SizedModel: the model and its counts.

    Raises:
        ConfigError: k or the layer list out of range for the model, an unreadable or
            mismatched profile, a LoRA rank above a target's dimension.
    """
    with torch.device("meta"):
        base = build()
    num_layers = len(base.layers)
    plan.stage1.check_depth(num_layers)
    sources, placeholder = _selected_layers(plan, base)
    metadata = None
    if plan.method.expand and sources is not None:
        metadata = ExpansionMetadata(num_layers, tuple(sources))
        with torch.device("meta"):
            model = expand_model(build, metadata)
    else:
        model = base
    positions = metadata.copy_positions if metadata else sources
    trainable: TrainableSet
    if plan.lora is not None:
        trainable = _adapters(plan, base)
    elif plan.stage1.selection == "spectrum":
        trainable = Matrices(tuple(_spectrum_stand_in(model, plan.stage1.spectrum_fraction)))
        placeholder = (
            "matrices are placeholders: their SNR picks them at run time; the estimate takes "
            "each kind's share from the lowest layers (the most activation memory)"
        )
    else:
        trainable = Everything() if positions is None else Layers(tuple(positions))
    with torch.device("meta"):
        summary = trainable.apply(model)
    fp32 = (
        frozenset(id(m) for m in trainable.fp32_modules(model))
        if plan.fp32_trainable
        else frozenset()
    )
    return SizedModel(
        method=plan.method.name,
        model=model,
        base_layers=num_layers,
        trains=trainable.describe(),
        positions=tuple(positions) if positions is not None and plan.lora is None else None,
        placeholder=placeholder,
        total_params=summary.total_params,
        trainable_params=summary.trainable_params,
        param_groups=len(trainable.param_groups(model)),
        precision=Precision(4 if plan.dtype == "fp32" else 2, fp32),
    )


def _selected_layers(plan: RunPlan, base: nn.Module) -> tuple[list[int] | None, str | None]:
    """The base layers stage 1 would select, and why they are stand-ins if they are."""
    stage1, num_layers = plan.stage1, len(base.layers)
    k = stage1.k
    lowest = list(range(k))
    if stage1.selection in (None, "spectrum"):
        return None, None
    if stage1.selection == "layers":
        return sorted(stage1.layers), None
    if stage1.selection == "uniform":
        return uniform_source_layers(num_layers, k), None
    if stage1.selection == "random":
        if plan.seed_is_random:
            return lowest, (
                f"positions are placeholders: seed=null draws them; the estimate takes layers "
                f"{lowest} (the lowest: the most activation memory any draw needs)"
            )
        return sorted(random.Random(plan.seed).sample(range(num_layers), k)), None
    if stage1.selection == "profile":
        profile = named_errors("expansion.profile", read_profile, stage1.profile)
        if stage1.importance not in profile.layer_scores:
            raise ConfigError(
                f"expansion.importance={stage1.importance!r}, but the profile {stage1.profile} "
                f"holds scores for {sorted(profile.layer_scores)}: choose one of those"
            )
        checkpoint_dir = Path(str(plan.checkpointer.get("checkpoint_dir") or "")).expanduser()
        named_errors(
            f"expansion.profile {stage1.profile}",
            check_profile_matches,
            profile,
            base,
            checkpoint_dir,
        )
        scores = dataclasses.replace(profile, method=stage1.importance).scores
        return named_errors("expansion.profile", select_layers, scores, k), None
    return lowest, (
        f"positions are placeholders: the probe picks them; the estimate takes layers {lowest} "
        "(the lowest: the most activation memory any choice needs)"
    )


def _spectrum_stand_in(model: nn.Module, fraction: float) -> list[str]:
    """``spectrum_selection`` over made-up SNRs that rank the lowest layers first."""
    kinds = tuple(LORA_TARGETS.values())  # the seven weight matrices of a layer
    scores = {i: dict.fromkeys(kinds, -float(i)) for i in range(len(model.layers))}
    return spectrum_selection(scores, fraction)


def _adapters(plan: RunPlan, base: nn.Module) -> Adapters:
    """``method=lora``'s adapters, their rank matched or checked as the recipe does."""
    lora = plan.lora
    if lora.rank is None and not 1 <= lora.match_k < len(base.layers):
        raise ConfigError(
            f"expansion.num_layers={lora.match_k}: lora.rank: match counts k copies, and the "
            f"base model has {len(base.layers)} layers (valid k: 1..{len(base.layers) - 1})"
        )
    rank = match_rank(base, lora.targets, lora.match_k).rank if lora.rank is None else lora.rank
    named_errors("lora.rank", check_adapter_rank, base, lora.targets, rank)
    alpha = 2.0 * rank if lora.alpha is None else lora.alpha
    return Adapters(lora.targets, rank, alpha, lora.dropout, seed=plan.seed)
