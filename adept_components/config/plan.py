"""The run plan of ``adept_cpt``: the config read once, checked, typed and frozen.

The recipe reads this plan and never the config. Every default of the recipe lives here,
every field is checked here with its config name in the message, and the method table
(``adept_components.methods``) decides what each method does. The component sections
(``model``, ``dataset``, ``lr_scheduler``, ...) stay ``DictConfig`` nodes, because torchtune's
``config.instantiate`` builds them; the plan only reads the fields the recipe itself needs
from them (sequence lengths, the optimizer's class and arguments).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import random
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.optim import Optimizer

from adept_components.config.components import check_components
from adept_components.config.loading import (
    ConfigError,
    check_int,
    check_positive_int,
    check_run_fields,
)
from adept_components.expansion import COPY_INITS
from adept_components.importance import IMPORTANCE_METHODS, check_selected_layers
from adept_components.methods import METHODS, Method
from adept_components.optim import RefreshPolicy, resolve_optimizer_class
from adept_components.optim.unit_lr import DIRECTIONS
from adept_components.trainable import LORA_TARGETS

# Keys every adept_cpt config has; component sections need a ``_component_``.
REQUIRED_KEYS = ("output_dir", "seed", "device", "dtype", "model", "tokenizer", "checkpointer",
                 "metric_logger", "method", "expansion", "dataset", "optimizer", "lr_scheduler",
                 "batch_size", "max_steps")  # fmt: skip
COMPONENT_KEYS = ("model", "tokenizer", "checkpointer", "metric_logger", "dataset", "optimizer",
                  "lr_scheduler")  # fmt: skip
# How stage 1 picks the layers: an explicit list, a saved profile, or the method's own way.
LayerSelection = Literal["layers", "profile", "probe", "uniform", "random", "spectrum"]


@dataclasses.dataclass(frozen=True)
class Stage1Plan:
    """Stage 1: which layers, and the probe set that measures them (spec S1).

    Attributes:
        selection (str | None): ``"layers"`` (``expansion.layers``), ``"profile"``
            (``expansion.profile``), or the method's ``select``; None for ``full``.
        k (int): layers to select (``expansion.num_layers``, or the explicit list's length).
        layers (tuple[int, ...] | None): ``expansion.layers``.
        importance (str): ``expansion.importance``: the probe method that ranks layers.
        profile (Path | None): ``expansion.profile``: a saved ``layer_importance.json``.
        probe (DictConfig | None): the ``probe`` dataset section, when the method reads it.
        probe_batch_size (int): ``probe_batch_size``.
        only (bool): ``stage1_only``: save the expanded model and stop.
        spectrum_fraction (float): ``expansion.spectrum_fraction``: with ``spectrum``, the
            share of each kind of weight matrix that trains (the top by SNR).
        copy_init (str): ``expansion.copy_init``: how a copy starts (``auto``: the family's,
            ``zero_out_proj``: the spec's, ``zero_post_norm``: gains of the post-branch norms
            zero; ``expansion.resolve_copy_init``).
        gate_lr_multiplier (float | None): ``expansion.gate_lr_multiplier``: the learning-rate
            multiplier of a ``zero_post_norm`` copy's gains; None (``auto``): the measured
            default, ``expansion.GATE_LR_MULTIPLIER``.
        interference_chunk (int | None): ``expansion.interference_chunk``: with
            ``importance: interference``, the candidate copies scored per pass (memory);
            None: all layers at once.
    """

    selection: LayerSelection | None
    k: int = 0
    layers: tuple[int, ...] | None = None
    importance: str = "mask-out"
    profile: Path | None = None
    probe: DictConfig | None = None
    probe_batch_size: int = 8
    only: bool = False
    spectrum_fraction: float = 0.25
    copy_init: str = "auto"
    gate_lr_multiplier: float | None = None
    interference_chunk: int | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig, method: Method) -> Stage1Plan:
        expansion = cfg.expansion
        known = ("num_layers", "layers", "importance", "profile", "spectrum_fraction",
                 "copy_init", "gate_lr_multiplier", "interference_chunk")  # fmt: skip
        _check_keys(expansion, "expansion", known)
        layers = expansion.get("layers")
        if layers is not None and not isinstance(layers, (list, ListConfig)):
            raise ConfigError(f"expansion.layers={layers!r} must be a list of layer indices")
        layers = tuple(layers) if layers else None
        importance = expansion.get("importance") or "mask-out"
        if importance not in IMPORTANCE_METHODS:
            raise ConfigError(
                f"expansion.importance={importance!r}; use one of {', '.join(IMPORTANCE_METHODS)}"
            )
        profile = expansion.get("profile")
        selection: LayerSelection | None = method.select
        if method.select is not None and layers:
            selection = "layers"
        elif method.select == "probe" and profile:
            selection = "profile"
        k = len(layers) if layers else expansion.get("num_layers")
        fraction = expansion.get("spectrum_fraction")
        fraction = 0.25 if fraction is None else fraction
        if selection == "spectrum":
            k = 0
            if (
                isinstance(fraction, bool)
                or not isinstance(fraction, (int, float))
                or not (0 < fraction <= 1)
            ):
                raise ConfigError(
                    f"expansion.spectrum_fraction={fraction!r} must be a number in (0, 1]: the "
                    "share of each kind of weight matrix that trains (0.25: Spectrum-25)"
                )
        elif selection not in (None, "layers"):
            check_int(k, "expansion.num_layers", why=" (k, layers to expand)")
        if method.needs_probe_data and "probe" not in cfg:
            raise ConfigError(
                f"method={method.name} needs a `probe` section (general-domain probe data)"
            )
        check_positive_int(cfg, "probe_batch_size", required=False)
        copy_init = expansion.get("copy_init") or "auto"
        if copy_init not in COPY_INITS:
            raise ConfigError(
                f"expansion.copy_init={copy_init!r}; use one of {', '.join(COPY_INITS)}"
            )
        multiplier = expansion.get("gate_lr_multiplier")
        multiplier = None if multiplier in (None, "auto") else multiplier
        if multiplier is not None and (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, (int, float))
            or not 0 < multiplier < math.inf
        ):
            raise ConfigError(
                f"expansion.gate_lr_multiplier={multiplier!r} must be auto or a positive number"
            )
        chunk = expansion.get("interference_chunk")
        if chunk is not None:
            check_int(chunk, "expansion.interference_chunk", why=" (copies scored per pass)")
        return cls(
            selection=selection,
            k=k if selection is not None else 0,
            layers=layers,
            importance=importance,
            profile=Path(str(profile)).expanduser() if profile else None,
            probe=cfg.probe if method.needs_probe_data else None,
            probe_batch_size=cfg.get("probe_batch_size") or 8,
            only=_bool(cfg, "stage1_only", False),
            spectrum_fraction=float(fraction),
            copy_init=copy_init,
            gate_lr_multiplier=None if multiplier is None else float(multiplier),
            interference_chunk=chunk,
        )

    def check_depth(self, num_layers: int) -> None:
        """Check k or the explicit list against the base model's depth.

        Raises:
            ConfigError: k out of ``1..num_layers-1`` or a layer index out of range.
        """
        if self.selection in (None, "spectrum"):
            return
        if self.layers:
            try:
                check_selected_layers(self.layers, num_layers, field="expansion.layers")
            except ValueError as e:
                raise ConfigError(str(e)) from None
        elif not 1 <= self.k < num_layers:
            raise ConfigError(
                f"expansion.num_layers={self.k}: k={self.k} but the base model has {num_layers} "
                f"layers (valid k: 1..{num_layers - 1})"
            )


LORA_DEFAULTS: dict[str, Any] = {
    "rank": "match",
    "alpha": "auto",
    "dropout": 0.0,
    "targets": list(LORA_TARGETS),
}


@dataclasses.dataclass(frozen=True)
class LoraPlan:
    """``method=lora``'s adapters: the ``lora`` section.

    Attributes:
        rank (int | None): ``lora.rank``; None for ``match`` (the rank whose adapter count is
            closest to ADEPT's ``expansion.num_layers`` copies, found from the model).
        alpha (float | None): ``lora.alpha``; None for ``auto`` (2 x rank: a scale of 2).
        dropout (float): ``lora.dropout``, in [0, 1).
        targets (tuple[str, ...]): ``lora.targets``: HF names of the adapted linears.
        match_k (int): the k of ``rank: match``.
    """

    rank: int | None = None
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = tuple(LORA_TARGETS)
    match_k: int = 0

    @classmethod
    def from_config(cls, cfg: DictConfig, method: Method) -> LoraPlan | None:
        """Read ``lora`` (None unless ``method=lora``, whose fields another method refuses).

        Raises:
            ConfigError: a bad field, or a ``lora`` field set for another method.
        """
        section = cfg.get("lora")
        if section is not None and not isinstance(section, DictConfig):
            raise ConfigError("`lora` must be a mapping (rank, alpha, dropout, targets)")
        values = dict(LORA_DEFAULTS)
        if section is not None:
            _check_keys(section, "lora", tuple(LORA_DEFAULTS))
            given = OmegaConf.to_container(section, resolve=True)
            values.update({k: v for k, v in given.items() if v is not None})
        if not method.adapters:
            changed = [k for k in LORA_DEFAULTS if values[k] != LORA_DEFAULTS[k]]
            if changed:
                raise ConfigError(
                    f"lora.{changed[0]}={values[changed[0]]!r} applies to method=lora only, but "
                    f"method={method.name}: set method=lora, or leave lora.{changed[0]} at "
                    f"its default ({LORA_DEFAULTS[changed[0]]!r})"
                )
            return None
        rank, alpha, dropout, targets = (values[k] for k in ("rank", "alpha", "dropout", "targets"))
        if rank != "match":
            check_int(rank, "lora.rank", why=" or match (the adapters' rank)")
        if alpha != "auto" and (
            isinstance(alpha, bool)
            or not isinstance(alpha, (int, float))
            or not 0 < alpha < math.inf
        ):
            raise ConfigError(f"lora.alpha={alpha!r} must be auto (2 x rank) or a positive number")
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not 0 <= dropout < 1
        ):
            raise ConfigError(f"lora.dropout={dropout!r} must be a number in [0, 1)")
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not targets:
            raise ConfigError(
                f"lora.targets={targets!r} must be a non-empty list of {', '.join(LORA_TARGETS)}"
            )
        unknown = [t for t in targets if not isinstance(t, str) or t not in LORA_TARGETS]
        if unknown or len(set(targets)) != len(targets):
            what = f"{unknown[0]!r} is not a target" if unknown else "repeats a target"
            raise ConfigError(
                f"lora.targets={targets}: {what}; the targets are {', '.join(LORA_TARGETS)}"
            )
        match_k = 0
        if rank == "match":
            layers = cfg.expansion.get("layers")
            match_k = len(layers) if layers else cfg.expansion.get("num_layers")
            check_int(match_k, "expansion.num_layers", why=" (lora.rank: match counts k copies)")
        if cfg.get("intermediate_checkpoints") == "full":
            raise ConfigError(
                "intermediate_checkpoints=full with method=lora: a whole HF model holds the "
                "merged weights, from which the adapters cannot be resumed; use trainable "
                "(adept-cpt export turns any step into a merged HF model and its adapter)"
            )
        return cls(
            rank=None if rank == "match" else int(rank),
            alpha=None if alpha == "auto" else float(alpha),
            dropout=float(dropout),
            targets=tuple(targets),
            match_k=match_k,
        )


SCORINGS = ("paper", "per_kind", "conflict")


@dataclasses.dataclass(frozen=True)
class UnitTuningPlan:
    """Stage 2's per-unit learning rates (spec S2.2-S2.4): ``unit_tuning``.

    Attributes:
        refresh_every (int): re-score unit importance every this many optimizer steps.
        refresh_at_start (bool): also score once before the first step.
        min_scale (float): floor of every multiplier, in ``[0, 2]``.
        separate_norm_range (bool): normalise norm and matrix units separately.
        direction (str): ``general`` (the paper) or ``domain``.
        scoring (str): ``paper`` (spec S2.2-S2.3: mean |θ|·|g| on the probe, min-max over all
            units), ``per_kind`` (the same scores, normalised within each kind of unit across
            the copies) or ``conflict`` (the negative part of the cosine between each unit's
            domain and general gradients, ``unit_conflict``).
        units (str): ``tensor`` (each parameter tensor is a unit, spec S2.1) or ``rows`` (every
            row of a matrix is a unit, its scale applied to its update, ``RowLRScaler``).
    """

    refresh_every: int = 500
    refresh_at_start: bool = False
    min_scale: float = 0.0
    separate_norm_range: bool = False
    direction: str = "general"
    scoring: str = "paper"
    units: str = "tensor"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> UnitTuningPlan:
        section = cfg.get("unit_tuning") or OmegaConf.create({})
        names = [f.name for f in dataclasses.fields(cls)]
        _check_keys(section, "unit_tuning", names)
        plan = cls(**{k: section[k] for k in names if section.get(k) is not None})
        try:  # the policy checks its own numbers; the message gains the section's name
            RefreshPolicy(plan.refresh_every, plan.refresh_at_start)
        except ValueError as e:
            raise ConfigError(f"unit_tuning.{e}") from None
        for key in ("refresh_at_start", "separate_norm_range"):
            if not isinstance(getattr(plan, key), bool):
                raise ConfigError(f"unit_tuning.{key}={getattr(plan, key)!r} must be true or false")
        scale = plan.min_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale <= 2:
            raise ConfigError(f"unit_tuning.min_scale={scale!r} must be a number in [0, 2]")
        if plan.scoring not in SCORINGS:
            raise ConfigError(
                f"unit_tuning.scoring={plan.scoring!r}; use one of {', '.join(SCORINGS)}"
            )
        if plan.units not in ("tensor", "rows"):
            raise ConfigError(f"unit_tuning.units={plan.units!r}; use tensor or rows")
        if plan.units == "rows" and plan.scoring == "conflict":
            raise ConfigError(
                "unit_tuning.units=rows scores rows with scoring=paper or per_kind; conflict "
                "scores whole tensors: set unit_tuning.units=tensor"
            )
        if plan.direction not in DIRECTIONS:
            raise ConfigError(
                f"unit_tuning.direction={plan.direction!r}; use one of {', '.join(DIRECTIONS)}"
            )
        return dataclasses.replace(plan, min_scale=float(scale))

    @property
    def policy(self) -> RefreshPolicy:
        """When to re-score."""
        return RefreshPolicy(self.refresh_every, self.refresh_at_start)

    @property
    def scale_options(self) -> dict[str, Any]:
        """Keyword arguments of ``lr_scales``."""
        return {
            "min_scale": self.min_scale,
            "separate_norm_range": self.separate_norm_range,
            "direction": self.direction,
            "per_kind": self.scoring == "per_kind",
        }


@dataclasses.dataclass(frozen=True)
class OptimizerPlan:
    """``optimizer``: ``_component_`` is the optimizer class, the other keys its arguments.

    The recipe builds the param groups (one per unit, or one for ``full``) and calls
    ``cls(groups, lr=lr, **kwargs)``.

    Attributes:
        cls (type[Optimizer]): the class (``torch.optim.AdamW``, ``torchao.optim.AdamW8bit``, ...).
        lr (float): the base learning rate, ``optimizer.lr``.
        kwargs (dict[str, Any]): every other key (a list ``betas`` becomes a tuple).
    """

    cls: type[Optimizer]
    lr: float
    kwargs: dict[str, Any]

    @classmethod
    def from_config(cls, section: DictConfig) -> OptimizerPlan:
        try:
            optimizer_cls = resolve_optimizer_class(section._component_)
        except ValueError as e:
            raise ConfigError(f"optimizer._component_: {e}") from None
        kwargs = {
            k: v for k, v in OmegaConf.to_container(section).items() if k not in ("_component_",)
        }
        lr = kwargs.pop("lr", None)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise ConfigError(f"optimizer.lr={lr!r} must be a positive number")
        if isinstance(kwargs.get("betas"), list):
            kwargs["betas"] = tuple(kwargs["betas"])
        try:  # refuse unknown arguments now, not after the probe
            inspect.signature(optimizer_cls).bind([], lr=lr, **kwargs)
        except TypeError as e:
            raise ConfigError(
                f"optimizer: {optimizer_cls.__module__}.{optimizer_cls.__qualname__} does not "
                f"accept the arguments {sorted(kwargs)}: {e}"
            ) from None
        return cls(optimizer_cls, float(lr), kwargs)


INTERMEDIATE_CHECKPOINTS = ("trainable", "full")


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """Stage 2's loop: budget, batching, clipping, logging and saving.

    Attributes:
        batch_size (int): sequences per micro-batch per rank.
        grad_accum (int): ``gradient_accumulation_steps``.
        max_steps (int): optimizer steps of the whole run (the schedule's length).
        stop_after_steps (int | None): stop this many steps after the start (or resume) and
            leave a checkpoint to resume from.
        clip_grad_norm (float | None): global gradient-norm clip of the trained weights
            (``inf``: measure and log ``grad_norm`` without clipping, as torchtune).
        log_every (int): ``log_every_n_steps``.
        log_peak_memory (bool): ``log_peak_memory_stats``: peak memory on every log line.
        save_every (int): ``save_every_n_steps`` (0: only the final checkpoint).
        keep_last_n (int | None): ``keep_last_n_checkpoints``: the ``step_N`` checkpoints
            kept, the newest; an older one is removed only once a newer one is complete.
            None keeps all.
        intermediate_checkpoints (str): what a ``step_N`` checkpoint holds: ``trainable``
            (the trained tensors, optimizer and schedule, over a reference to the base
            checkpoint) or ``full`` (a complete HF directory as well). ``final`` is always full.
        activation_checkpointing (bool): ``enable_activation_checkpointing``.
        compile (bool): ``torch.compile`` the model.
        dataset (DictConfig): the domain corpus component.
        lr_scheduler (DictConfig): the schedule component (gets ``num_training_steps``).
        loss (DictConfig | None): the loss component; None: chunked cross-entropy.
    """

    batch_size: int
    max_steps: int
    dataset: DictConfig
    lr_scheduler: DictConfig
    grad_accum: int = 1
    stop_after_steps: int | None = None
    clip_grad_norm: float | None = None
    log_every: int = 1
    log_peak_memory: bool = False
    save_every: int = 0
    keep_last_n: int | None = None
    intermediate_checkpoints: str = "trainable"
    activation_checkpointing: bool = False
    compile: bool = False
    loss: DictConfig | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TrainPlan:
        for key in ("batch_size", "max_steps"):
            check_positive_int(cfg, key)
        for key in ("gradient_accumulation_steps", "stop_after_steps", "keep_last_n_checkpoints"):
            check_positive_int(cfg, key, required=False)
        for key in ("save_every_n_steps", "log_every_n_steps"):
            if cfg.get(key) is not None:
                check_int(cfg[key], key, minimum=0)
        clip = cfg.get("clip_grad_norm")
        if isinstance(clip, str) and clip.lower() in ("inf", "+inf", "infinity"):
            clip = math.inf  # torchtune's idiom: log the norm, clip nothing
        if clip is not None and (
            isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0
        ):
            raise ConfigError(
                f"clip_grad_norm={clip!r} must be a positive number, inf (log grad_norm without "
                "clipping) or null"
            )
        contents = cfg.get("intermediate_checkpoints") or "trainable"
        if contents not in INTERMEDIATE_CHECKPOINTS:
            raise ConfigError(
                f"intermediate_checkpoints={contents!r} must be one of "
                f"{list(INTERMEDIATE_CHECKPOINTS)}: 'trainable' stores the trained tensors and "
                "the optimizer state, 'full' also a complete HF model per step"
            )
        if cfg.get("optimizer_in_bwd"):
            raise ConfigError(
                "optimizer_in_bwd=True forces one learning rate on every parameter, which "
                "defeats per-unit learning rates; remove it"
            )
        return cls(
            batch_size=cfg.batch_size,
            max_steps=cfg.max_steps,
            dataset=cfg.dataset,
            lr_scheduler=cfg.lr_scheduler,
            grad_accum=cfg.get("gradient_accumulation_steps") or 1,
            stop_after_steps=cfg.get("stop_after_steps"),
            clip_grad_norm=None if clip is None else float(clip),
            log_every=1 if cfg.get("log_every_n_steps") is None else cfg.log_every_n_steps,
            log_peak_memory=_bool(cfg, "log_peak_memory_stats", False),
            save_every=cfg.get("save_every_n_steps") or 0,
            keep_last_n=cfg.get("keep_last_n_checkpoints"),
            intermediate_checkpoints=contents,
            activation_checkpointing=_bool(cfg, "enable_activation_checkpointing", False),
            compile=_bool(cfg, "compile", False),
            loss=cfg.get("loss"),
        )


@dataclasses.dataclass(frozen=True)
class CanaryPlan:
    """The forgetting canary: held-out general and domain loss every N steps, and its gate.

    Attributes:
        every_n_steps (int): ``canary.every_n_steps`` (> 0; no plan when 0 or absent).
        batch_size (int): ``canary.batch_size``.
        general (DictConfig): ``canary.general``: a probe dataset of general text.
        domain (DictConfig): ``canary.domain``: a probe dataset of domain text.
        gate_limit (float | None): ``canary.gate_limit``: the largest general loss increase
            over the base model a canary may show (None: no gate).
        gate_relative (bool): ``canary.gate_relative``: the limit is a fraction of the base
            general loss (0.02: 2 %), not nats.
        gate_action (str): ``canary.gate_action``: ``stop`` (save, say so, stop) or ``warn``.
    """

    every_n_steps: int
    general: DictConfig
    domain: DictConfig
    batch_size: int = 8
    gate_limit: float | None = None
    gate_relative: bool = False
    gate_action: str = "stop"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> CanaryPlan | None:
        section = cfg.get("canary")
        limit = section.get("gate_limit") if section else None
        if not section or not section.get("every_n_steps"):
            if limit is not None:
                raise ConfigError(
                    f"canary.gate_limit={limit} needs the canary: set canary.every_n_steps > 0 "
                    "(the gate acts on its measurements)"
                )
            return None
        known = ("every_n_steps", "batch_size", "general", "domain", "gate_limit", "gate_relative",
                 "gate_action")  # fmt: skip
        _check_keys(section, "canary", known)
        every = check_int(section.every_n_steps, "canary.every_n_steps", minimum=0)
        for name in ("general", "domain"):
            if not isinstance(section.get(name), DictConfig):
                raise ConfigError(
                    f"canary.every_n_steps is set but canary.{name} (a probe_dataset) is missing"
                )
        batch_size = 8 if section.get("batch_size") is None else section.batch_size
        check_int(batch_size, "canary.batch_size")
        if limit is not None and (
            isinstance(limit, bool)
            or not isinstance(limit, (int, float))
            or not 0 < limit < math.inf
        ):
            raise ConfigError(
                f"canary.gate_limit={limit!r} must be a positive number (nats of general loss "
                "increase, or a fraction of the base loss with canary.gate_relative=true) or null"
            )
        action = section.get("gate_action") or "stop"
        if action not in ("stop", "warn"):
            raise ConfigError(f"canary.gate_action={action!r} must be 'stop' or 'warn'")
        return cls(
            every,
            section.general,
            section.domain,
            batch_size,
            gate_limit=None if limit is None else float(limit),
            gate_relative=_bool(section, "gate_relative", False, "canary."),
            gate_action=action,
        )

    def gate_crossed(self, general_loss: float, general_base: float) -> str | None:
        """A sentence saying how far a canary crossed the gate, or None if it did not.

        Args:
            general_loss (float): the canary's general held-out loss.
            general_base (float): the base model's.

        Returns:
            str | None: e.g. ``general loss +0.0612 nats over the base (limit 0.05 nats)``.
        """
        if self.gate_limit is None:
            return None
        increase = general_loss - general_base
        if self.gate_relative:
            if increase <= self.gate_limit * general_base:
                return None
            return (
                f"general loss {increase / general_base:+.2%} over the base "
                f"(limit {self.gate_limit:.2%})"
            )
        if increase <= self.gate_limit:
            return None
        return f"general loss {increase:+.4f} nats over the base (limit {self.gate_limit:g} nats)"


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """One ``adept_cpt`` run, as the recipe reads it.

    Attributes:
        config (DictConfig): the resolved config, for the metric logger's copy only.
        method (Method): the method table's row.
        output_dir (Path): where everything is written.
        seed (int): the seed; a random one (``seed_is_random``) when the config says null.
        device (str): ``cpu``, ``cuda`` or ``cuda:N``.
        dtype (str): ``fp32`` or ``bf16``.
        fp32_trainable (bool): ``trainable_dtype: fp32`` in a bf16 run.
        model, tokenizer, checkpointer, metric_logger (DictConfig): component sections.
        stage1 (Stage1Plan), train (TrainPlan), optimizer (OptimizerPlan),
        unit_tuning (UnitTuningPlan), canary (CanaryPlan | None): the stages.
        lora (LoraPlan | None): ``method=lora``'s adapters.
        resume (bool): ``resume_from_checkpoint``.
        seq_lens (dict[str, int]): config field -> sequence length it asks for, each checked
            against the model's RoPE length before any data is read.
    """

    config: DictConfig
    method: Method
    output_dir: Path
    seed: int
    seed_is_random: bool
    device: str
    dtype: str
    fp32_trainable: bool
    model: DictConfig
    tokenizer: DictConfig
    checkpointer: DictConfig
    metric_logger: DictConfig
    stage1: Stage1Plan
    train: TrainPlan
    optimizer: OptimizerPlan
    unit_tuning: UnitTuningPlan
    canary: CanaryPlan | None
    lora: LoraPlan | None
    resume: bool
    seq_lens: dict[str, int]

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunPlan:
        """Check the whole config and build the plan; nothing is read from disk but config.

        Raises:
            ConfigError: the first bad field, by its config name, with the fix.
        """
        missing = [k for k in REQUIRED_KEYS if k not in cfg]
        if missing:
            raise ConfigError(f"config lacks required key(s) {missing}")
        for key in COMPONENT_KEYS:
            if not isinstance(cfg[key], DictConfig) or "_component_" not in cfg[key]:
                raise ConfigError(
                    f"`{key}` must be a mapping with a `_component_` entry: add "
                    f"{key}._component_=... (the shipped configs show one: adept-cpt ls, "
                    "adept-cpt cp)"
                )
        try:
            check_components(cfg)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        check_run_fields(cfg)
        seed = cfg.seed
        if isinstance(seed, str) and seed.lower() in ("none", "null"):
            seed = None  # `seed=None` on a command line is the string 'None' to OmegaConf
        seed_is_random = seed is None
        if seed_is_random:
            # Drawn here on every rank; the recipe keeps rank 0's (``shared_seed``). Below
            # 2**31, so seed + rank (torchtune's per-rank seed) stays a uint32.
            seed = random.SystemRandom().randrange(2**31)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ConfigError(f"seed={seed!r} must be an integer in [0, 2**32) or null (random)")
        trainable_dtype = cfg.get("trainable_dtype")
        if trainable_dtype not in (None, "fp32", cfg.dtype):
            raise ConfigError(
                f"trainable_dtype={trainable_dtype!r} with dtype={cfg.dtype}: use fp32 (trainable "
                "weights kept in fp32) or null (the run's dtype)"
            )
        if cfg.method not in METHODS:
            raise ConfigError(f"method={cfg.method!r}; use one of {', '.join(METHODS)}")
        method = METHODS[cfg.method]
        train = TrainPlan.from_config(cfg)
        optimizer = OptimizerPlan.from_config(cfg.optimizer)
        unit_tuning = UnitTuningPlan.from_config(cfg)
        stage1 = Stage1Plan.from_config(cfg, method)
        canary = CanaryPlan.from_config(cfg)
        lora = LoraPlan.from_config(cfg, method)
        seq_lens = {"dataset.max_seq_len": cfg.dataset.get("max_seq_len")}
        if stage1.probe is not None:
            seq_lens["probe.max_seq_len"] = stage1.probe.get("max_seq_len")
        if canary is not None:
            seq_lens["canary.general.max_seq_len"] = canary.general.get("max_seq_len")
            seq_lens["canary.domain.max_seq_len"] = canary.domain.get("max_seq_len")
        return cls(
            config=cfg,
            method=method,
            output_dir=Path(str(cfg.output_dir)).expanduser(),
            seed=seed,
            seed_is_random=seed_is_random,
            device=str(cfg.device),
            dtype=cfg.dtype,
            fp32_trainable=trainable_dtype == "fp32" and cfg.dtype != "fp32",
            model=cfg.model,
            tokenizer=cfg.tokenizer,
            checkpointer=cfg.checkpointer,
            metric_logger=cfg.metric_logger,
            stage1=stage1,
            train=train,
            optimizer=optimizer,
            unit_tuning=unit_tuning,
            canary=canary,
            lora=lora,
            resume=_bool(cfg, "resume_from_checkpoint", False),
            seq_lens={k: v for k, v in seq_lens.items() if v is not None},
        )


def _bool(cfg: DictConfig, key: str, default: bool, prefix: str = "") -> bool:
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}{key}={value!r} must be true or false")
    return value


def _check_keys(section: DictConfig, name: str, known: tuple[str, ...] | list[str]) -> None:
    """Refuse a key the recipe would silently ignore (a typo in the YAML)."""
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {name}.{close[0]}?" if close else ""
            raise ConfigError(
                f"{name}.{key} is not a field of {name} (fields: {', '.join(known)}).{hint}"
            )
