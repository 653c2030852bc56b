"""ADEPT continual pretraining: ``tune run adept_cpt --config NAME_OR_PATH [key=value ...]``.

Installed as the top-level module ``adept_cpt`` so that ``tune run adept_cpt`` (one process) and
``tune run --nproc_per_node N adept_cpt`` (torchrun, FSDP2) find it from any directory. The
recipe reads top to bottom, as the method does:

    plan          the config, checked once and frozen (``adept_components.config.plan``)
    setup         seed, device, process group; checkpointer, tokenizer, data, resume point
    stage 1       select layers (probe, uniform, random, an explicit list or a saved profile)
                  -> expand (each copy right after its source, output projections zero)
                  -> freeze all but what trains
    stage 2       train with one optimizer param group per unit, learning rates scaled by
                  unit importance and re-scored every N steps, a forgetting canary (general
                  vs domain held-out loss) every M steps
    save          a Hugging Face checkpoint with L + k layers and the expansion metadata

``method`` picks a row of the method table (``adept_components.methods``): ADEPT, or one of
the spec's baselines and ablations with the same data, seed and budget: ``full``,
``llama_pro``, ``no_stage1``, ``no_stage2``, ``random``.
"""

from __future__ import annotations

# isort: off
import adept_components.quiet  # noqa: F401  (before torchtune, which imports torchao)
# isort: on

import dataclasses
import functools
import json
import math
import os
import random
import shutil
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor
from torchtune import config as tt_config
from torchtune import training, utils
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX
from torchtune.modules import TransformerSelfAttentionLayer
from tqdm import tqdm

from adept_components.atomic import (
    new_tag,
    recover_directories,
    staging_directory,
    write_text_atomically,
)
from adept_components.checkpointing import (
    TRAINING_STATE_FILE,
    HFCheckpointer,
    TrainableCheckpointInfo,
    base_reference,
    check_base_reference,
    check_state_dict_matches,
    check_trainable_files,
    is_trainable_checkpoint,
    load_trainable_checkpoint,
    save_trainable_checkpoint,
    trainable_names,
)
from adept_components.checkpointing.materialize import materialize
from adept_components.config import (
    ConfigError,
    RunPlan,
    named_errors,
    resolved_config,
    user_errors,
)
from adept_components.data import MixedText, epoch_order, probe_batches
from adept_components.data.leading_bos import check_bos_leads, first_tokens, required_bos
from adept_components.distributed import broadcast_int
from adept_components.evaluation import retention_from_canary
from adept_components.expansion import (
    GATE_LR_MULTIPLIER,
    ExpansionMetadata,
    copy_fills,
    expand_model,
    expand_state_dict,
    expansion_extra_json,
    gate_units,
    load_expansion_metadata,
    resolve_copy_init,
    uniform_source_layers,
)
from adept_components.importance import (
    LayerProfile,
    check_profile_matches,
    check_snr_applies,
    module_snr,
    profile_layers,
    read_profile,
    row_importance,
    select_layers,
    spectrum_selection,
    unit_conflict,
    unit_importance,
    write_profile,
)
from adept_components.losses import ChunkedHeadCrossEntropy, heldout_loss, shift_labels
from adept_components.metrics import peak_memory_stats
from adept_components.models import architecture_of
from adept_components.models.tokenizers import vocabulary_size
from adept_components.optim import UnitScaledScheduler, build_optimizer, lr_scales, plot_scales
from adept_components.optim.row_scales import RowLRScaler, row_lr_scales
from adept_components.optim.unit_groups import clean_param_name
from adept_components.precision import keep_trainable_in_fp32
from adept_components.trainable import (
    Adapters,
    Everything,
    Layers,
    Matrices,
    TrainableSet,
    check_adapter_rank,
    match_rank,
    trainable_from_json,
)

log = utils.get_logger("INFO")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a resumed run continues from, read and checked before any write.

    Attributes:
        directory (Path): ``output_dir/checkpoints/step_N``.
        metadata (ExpansionMetadata | None): its expansion (None: not expanded).
        reader (HFCheckpointer): reads the weights the model is rebuilt from: the checkpoint's
            own (a full checkpoint) or the base's (a trainable-only one).
        state (dict[str, Any]): the training state (step, optimizer, schedule, RNG, ...).
        full (bool): the checkpoint is a complete HF model (``intermediate_checkpoints=full``);
            otherwise it holds the trained tensors, loaded over the rebuilt base.
    """

    directory: Path
    metadata: ExpansionMetadata | None
    reader: HFCheckpointer
    state: dict[str, Any]
    full: bool


class AdeptCPTRecipe:
    """One ADEPT (or baseline) run.

    Args:
        plan (RunPlan): the checked config (``RunPlan.from_config``).
    """

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.method = plan.method
        self.output_dir = plan.output_dir
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.device = utils.get_device(plan.device)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.world_size, self.rank = utils.get_world_size_and_rank()
        self.is_rank_zero = self.rank == 0
        self.dtype = training.get_dtype(plan.dtype, device=self.device)
        if plan.seed_is_random and self.distributed:  # each rank drew one: keep rank 0's
            plan = self.plan = dataclasses.replace(plan, seed=broadcast_int(plan.seed, self.device))
        if plan.seed > 2**32 - self.world_size:
            raise ConfigError(
                f"seed={plan.seed}: with {self.world_size} ranks every rank seeds seed + rank, "
                f"which must stay below 2**32; use a seed of at most {2**32 - self.world_size}"
            )
        training.set_seed(plan.seed)
        self.metric_logger = None  # built after everything that can reject the run
        self.metadata: ExpansionMetadata | None = None
        self.profile_files: dict[str, Path] = {}
        self.scheduler: Any = None
        self.step = 0
        self._order: tuple[int, list[int]] = (-1, [])  # (epoch, its chunk order)
        self.canary_base: dict[str, float] = {}
        self.canary_history: list[dict[str, float]] = []
        self.gate: str | None = None  # where the forgetting gate was crossed

    # ------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        """Checkpointer -> tokenizer -> resume point -> data -> base weights, then the logger.

        Everything that can reject the run or its files comes before the first write.
        """
        plan = self.plan
        self.checkpointer: HFCheckpointer = _instantiate("checkpointer", plan.checkpointer)
        self.architecture = self.checkpointer.architecture
        self.tokenizer = _instantiate("tokenizer", plan.tokenizer)
        self._check_tokenizer_fits()
        self.leading_bos = named_errors(
            "tokenizer",
            required_bos,
            self.architecture.family_record,
            self.tokenizer,
            self.checkpointer.hf_config,
        )
        plan.stage1.check_depth(self.architecture.num_layers)
        limit = plan.model.get("max_seq_len") or self.architecture.max_seq_len
        for field, seq_len in plan.seq_lens.items():
            if seq_len > limit:
                raise ConfigError(
                    f"{field}={seq_len} exceeds the model's max_seq_len={limit}; lower {field} "
                    "or raise model.max_seq_len (the model's RoPE cache length)"
                )
        # What a crash inside a save left (a partial temporary directory, or a checkpoint
        # moved aside just before its replacement was renamed in) is settled first: the only
        # change a run makes before its inputs are checked, and none when nothing crashed.
        self.recovered: list[str] = []
        if self.is_rank_zero:
            for parent in (self.output_dir, self.output_dir / "checkpoints"):
                self.recovered += recover_directories(parent)
        if self.distributed:
            dist.barrier()
        self.resume = self._find_resume_point() if plan.resume else None
        self.probe_batches = None
        if plan.stage1.probe is not None:
            probe = _instantiate("probe", plan.stage1.probe, tokenizer=self.tokenizer)
            self.probe_info = probe.info
            self.probe_batches = probe_batches(probe, plan.stage1.probe_batch_size)
            check = [tokens for tokens, _ in self.probe_batches]
            named_errors("probe", check_bos_leads, "probe", check, self.leading_bos)
        self.canary = self._build_canary()
        # The weights (named if damaged), checked against the model they will fill, and a
        # saved profile against the base model: all before anything is written.
        reader = self.resume.reader if self.resume else self.checkpointer
        self.state = named_errors("checkpointer.checkpoint_dir", reader.load_state_dict)
        build = partial(tt_config.instantiate, plan.model)
        metadata = self.resume.metadata if self.resume and self.resume.full else None
        with torch.device("meta"):
            model = expand_model(build, metadata) if metadata else build()
        family = self.architecture.family
        named_errors(
            f"checkpoint {reader.checkpoint_dir}",
            check_state_dict_matches,
            model,
            self.state,
            family,
        )
        if plan.stage1.selection == "spectrum" or (
            plan.stage1.importance == "snr" and plan.stage1.selection == "probe"
        ):
            named_errors("expansion.importance", check_snr_applies, model)
        self.adapters = self._plan_adapters(model) if plan.lora is not None else None
        self.base_reference = base_reference(self.checkpointer)
        from_profile = plan.stage1.selection == "profile" and self.resume is None
        self.profile = self._read_profile(model) if from_profile else None
        del model
        # Last of the inputs: the largest, and with dataset.cache_dir the only one written
        # (a fresh output_dir that only the token cache created goes again if it is refused).
        fresh = not self.output_dir.exists()
        try:
            bos = {"bos_leads_chunks": True} if self.leading_bos is not None else {}
            self.dataset = _instantiate(
                "dataset", plan.train.dataset, tokenizer=self.tokenizer, **bos
            )
            chunks = first_tokens(self.dataset)
            named_errors("dataset", check_bos_leads, "dataset", chunks, self.leading_bos)
            if len(self.dataset) < plan.train.batch_size * self.world_size:
                raise ConfigError(
                    f"the domain corpus has {len(self.dataset)} chunks of "
                    f"{self.dataset.info.max_seq_len} tokens, fewer than one global batch "
                    f"({plan.train.batch_size} x {self.world_size} ranks)"
                )
        except BaseException:
            if fresh and self.is_rank_zero:
                shutil.rmtree(self.output_dir, ignore_errors=True)
            raise

        if self.is_rank_zero:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.metric_logger = tt_config.instantiate(plan.metric_logger)
            self.metric_logger.log_config(plan.config)
            for line in self.recovered:
                self._log(f"Checkpoint directory: {line}")
        if plan.seed_is_random:
            self._log(f"seed=null: random seed {plan.seed} (set seed={plan.seed} to repeat)")
        corpus = self.dataset.info
        self._log(
            f"Base model: {self.architecture.family}, {self.architecture.num_layers} layers; "
            f"domain corpus: {corpus.num_tokens:,} tokens in {len(self.dataset):,} chunks of "
            f"{corpus.max_seq_len}; method={self.method.name}; world size {self.world_size}"
        )
        if isinstance(self.dataset, MixedText):
            self._log(
                "Mixture per epoch: "
                + ", ".join(
                    f"{s.source} {s.chunks:,} chunks ({s.chunks / len(self.dataset):.1%}, weight "
                    f"{s.weight:g}; {s.available - s.chunks:,} of its chunks unused)"
                    for s in self.dataset.shares
                )
            )

    # ----------------------------------------------------------------------------- stage 1

    def stage1(self) -> None:
        """Select -> expand -> freeze (spec S1.1-S1.5), as the method's table row says."""
        state = self.state
        if self.resume is not None:
            self.metadata = self.resume.metadata
            layers = None
            if self.metadata is not None and not self.resume.full:
                # the trained tensors load over the copies later
                state = expand_state_dict(state, self.metadata, self._copy_fills())
            self._log(f"Resuming from {self.resume.directory}")
        else:
            sources = self._select_layers()
            if self.method.expand:
                self.metadata = ExpansionMetadata(self.architecture.num_layers, sources)
                state = expand_state_dict(state, self.metadata, self._copy_fills())
            layers = self.metadata.copy_positions if self.metadata else sources
        build = partial(tt_config.instantiate, self.plan.model)
        if self.metadata is not None:
            build = partial(expand_model, build, self.metadata)
        self.model = materialize(build, state, self.architecture.family, self.device, self.dtype)
        self.state = None
        self.trainable = self._trainable_set(layers)
        summary = self.trainable.apply(self.model)
        if isinstance(self.trainable, Matrices):
            self._log(
                f"Spectrum: {len(self.trainable.names)} matrices train (the top "
                f"{self.plan.stage1.spectrum_fraction:.0%} by SNR of each kind), in layers "
                f"{list(summary.trainable_layers)}"
            )
        if self.metadata is not None:
            init = resolve_copy_init(self.architecture.family_record, self.plan.stage1.copy_init)
            self._log(
                f"Expanded {self.metadata.base_num_layers} -> {self.metadata.num_layers} layers: "
                f"copies of {list(self.metadata.source_layers)} at {self.metadata.copy_positions} "
                f"(copy init {init})"
            )
        self._log(f"Trainable: {self.trainable.describe()}; {summary}")

    def _trainable_set(self, layers: list[int] | None) -> TrainableSet:
        """What trains, as the method's row says (a resumed run: what its checkpoint trained).

        Args:
            layers (list[int] | None): the copies' positions, or the selected layers of a
                method that trains originals; None when no layer was selected.
        """
        if self.resume is not None:
            saved = trainable_from_json(self.resume.state.get("trainable") or self.resume.state)
            if self.adapters is not None and dataclasses.replace(saved, seed=0) != (
                dataclasses.replace(self.adapters, seed=0)
            ):
                raise ConfigError(
                    f"resume checkpoint {self.resume.directory} trained {saved.describe()}, the "
                    f"config gives {self.adapters.describe()} (dropout {self.adapters.dropout:g}): "
                    "resume with the run's own lora settings"
                )
            return saved
        if self.adapters is not None:
            return self.adapters
        if self.plan.stage1.selection == "spectrum":
            return Matrices(tuple(self._spectrum_matrices()))
        return Everything() if layers is None else Layers(tuple(layers))

    def _plan_adapters(self, base: torch.nn.Module) -> Adapters:
        """``method=lora``'s adapters, their rank checked (or matched) on the base model."""
        lora = self.plan.lora
        if lora.rank is None and not 1 <= lora.match_k < len(base.layers):
            raise ConfigError(
                f"expansion.num_layers={lora.match_k}: lora.rank: match counts k copies, and the "
                f"base model has {len(base.layers)} layers (valid k: 1..{len(base.layers) - 1})"
            )
        if lora.rank is None:
            match = match_rank(base, lora.targets, lora.match_k)
            rank = match.rank
            self._log(
                f"lora.rank: match -> rank {rank}: {match.adapter_params:,} adapter parameters, "
                f"ADEPT with k={lora.match_k} copies trains {match.copy_params:,} "
                f"(ratio {match.ratio:.3f})"
            )
        else:
            rank = lora.rank
        named_errors("lora.rank", check_adapter_rank, base, lora.targets, rank)
        alpha = 2.0 * rank if lora.alpha is None else lora.alpha
        return Adapters(lora.targets, rank, alpha, lora.dropout, seed=self.plan.seed)

    def _spectrum_matrices(self) -> list[str]:
        """Spectrum's matrices: the top-SNR share of each kind, of the base weights (a resumed
        run reads them from its checkpoint's ``trainable`` record: trained weights' SNR differs).
        """
        start = time.perf_counter()
        names = spectrum_selection(module_snr(self.model), self.plan.stage1.spectrum_fraction)
        self._log(f"Scored the SNR of every weight matrix in {time.perf_counter() - start:.1f}s")
        return names

    def _select_layers(self) -> list[int] | None:
        """The base layers to copy (or, for a method that does not expand, to train).

        One function per ``Stage1Plan.selection``; None (``full``) selects nothing.
        """
        stage1, num_layers = self.plan.stage1, self.architecture.num_layers
        selectors = {
            "layers": lambda: sorted(stage1.layers),
            "uniform": lambda: uniform_source_layers(num_layers, stage1.k),
            "random": lambda: sorted(random.Random(self.plan.seed).sample(range(num_layers), stage1.k)),
            "profile": self._probe_layers,
            "probe": self._probe_layers,
        }  # fmt: skip
        if stage1.selection in (None, "spectrum"):  # spectrum picks matrices (stage1)
            return None
        selected = list(selectors[stage1.selection]())
        self._log(f"Selected layers {selected} (k={stage1.k})")
        return selected

    def _read_profile(self, base: torch.nn.Module) -> LayerProfile:
        """``expansion.profile``, checked against the base model and ``expansion.importance``."""
        stage1 = self.plan.stage1
        profile = named_errors("expansion.profile", read_profile, stage1.profile)
        field, checkpoint_dir = (
            f"expansion.profile {stage1.profile}",
            self.checkpointer.checkpoint_dir,
        )
        named_errors(field, check_profile_matches, profile, base, checkpoint_dir)
        if stage1.importance not in profile.layer_scores:
            raise ConfigError(
                f"expansion.importance={stage1.importance!r}, but the profile {stage1.profile} "
                f"holds scores for {sorted(profile.layer_scores)}: choose one of those, or drop "
                "expansion.profile to probe again"
            )
        return dataclasses.replace(profile, method=stage1.importance)

    def _probe_layers(self) -> list[int]:
        """Score every layer on the probe set (or read a saved profile); the k least critical."""
        stage1 = self.plan.stage1
        if self.profile is not None:
            profile = self.profile
            self._log(f"Layer importance ({stage1.importance}) read from {stage1.profile}")
        else:
            base = materialize(
                partial(tt_config.instantiate, self.plan.model),
                self.state,
                self.architecture.family,
                self.device,
                self.dtype,
            )
            start = time.perf_counter()
            interference = {}
            if stage1.importance == "interference":  # the copies' domain steps, predicted
                interference = {
                    "domain": self._domain_batches,
                    "fills": self._copy_fills(),
                    "domain_info": self._domain_batches_info(),
                    "chunk": stage1.interference_chunk,
                }
            profile = profile_layers(
                base,
                self.probe_batches,
                self.probe_info,
                stage1.k,
                method=stage1.importance,
                checkpoint_dir=self.checkpointer.checkpoint_dir,
                progress=self.is_rank_zero,
                **interference,
            )
            parts = ", ".join(f"{name} {t:.1f}s" for name, t in profile.seconds.items())
            self._log(
                f"Probed {len(base.layers)} layers in {time.perf_counter() - start:.1f}s ({parts})"
            )
            del base
        selected = select_layers(profile.scores, stage1.k)
        if self.is_rank_zero:
            profile = dataclasses.replace(profile, selected_layers=list(selected))
            self.profile_files = write_profile(profile, self.output_dir / "profile")
            scores = ", ".join(f"{s:.4f}" for s in profile.scores)
            self._log(f"Layer importance ({profile.method}): [{scores}]")
        return list(selected)

    # ----------------------------------------------------------------------------- stage 2

    def setup_training(self) -> None:
        """Precision, distribute, then optimizer (one group per unit) -> LR schedule -> resume."""
        plan, train = self.plan, self.plan.train
        if plan.fp32_trainable:
            kept = keep_trainable_in_fp32(self.trainable.fp32_modules(self.model), self.dtype)
            self._log(
                f"Trainable weights in fp32 ({sum(p.numel() for m in kept for p in m.parameters()):,} "
                f"parameters), computed in {plan.dtype} under autocast"
            )
        if train.activation_checkpointing:
            training.set_activation_checkpointing(
                self.model, auto_wrap_policy={TransformerSelfAttentionLayer}
            )
        if self.distributed:
            training.shard_model(
                self.model,
                [lambda _, m: isinstance(m, TransformerSelfAttentionLayer)],
                cpu_offload=False,
                reshard_after_forward=True,
            )
        if train.compile:
            training.compile_model(self.model, verbose=False)
        self.loss_fn = (
            tt_config.instantiate(train.loss)
            if train.loss is not None
            else ChunkedHeadCrossEntropy()
        )
        if hasattr(self.loss_fn, "num_output_chunks"):
            self.model.set_num_output_chunks(self.loss_fn.num_output_chunks)
        # The head a chunk at a time inside the loss (a Decoder of this package defers it).
        # Not under FSDP: the loss would apply the head after the root's forward has resharded
        # its weight, so sharded runs keep torchtune's chunked logits.
        defers = bool(getattr(self.loss_fn, "defers_head", False))
        self.model.defer_head = defers and not self.distributed

        optimizer = plan.optimizer
        self.optimizer = build_optimizer(
            self.trainable.param_groups(self.model),
            optimizer.cls,
            optimizer.lr,
            **optimizer.kwargs,
        )
        inner = tt_config.instantiate(
            train.lr_scheduler, self.optimizer, num_training_steps=train.max_steps
        )
        self.scheduler = (
            UnitScaledScheduler(self.optimizer, inner, self._gate_multipliers())
            if self.trainable.per_unit
            else inner
        )
        self.row_scaler = None
        if self.method.decoupled and self.plan.unit_tuning.units == "rows":
            self.row_scaler = RowLRScaler(self.model, self.optimizer)
        if self.resume is not None:
            self._load_training_state(self.resume)
        elif self.canary:
            start = time.perf_counter()
            self.canary_base = self._canary_losses()
            if self.is_rank_zero:
                self.metric_logger.log_dict(
                    {"canary/seconds": time.perf_counter() - start}, step=self.step
                )

    def train(self) -> None:
        """The training loop: accumulate, step, refresh unit scales, canary, checkpoint."""
        train, refresh = self.plan.train, self.plan.unit_tuning.policy
        decoupled = self.method.decoupled
        canary_every = self.plan.canary.every_n_steps if self.canary else 0
        if decoupled and self.step == 0 and refresh.due(0):
            self._refresh_scales()
        self.model.train()
        progress = tqdm(
            total=train.max_steps,
            initial=self.step,
            disable=not self.is_rank_zero,
            desc="train",
            dynamic_ncols=True,
        )
        stop_at = train.max_steps
        if train.stop_after_steps:
            stop_at = min(train.max_steps, self.step + train.stop_after_steps)
        # Training throughput counts training only: re-scoring, canary and saves are timed
        # and logged on their own (refresh_seconds, canary/seconds, save_seconds).
        tokens_seen, start = 0, time.perf_counter()
        while self.step < stop_at:
            loss, num_tokens, grad_norm = self.train_step()
            self.step += 1
            tokens_seen += num_tokens
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}")
            if self.is_rank_zero and train.log_every and self.step % train.log_every == 0:
                seconds = time.perf_counter() - start
                metrics = {
                    "loss": loss,
                    "lr": self._base_lr(),
                    "tokens_per_second_per_gpu": tokens_seen / seconds / self.world_size,
                }
                if grad_norm is not None:
                    metrics["grad_norm"] = grad_norm
                if train.log_peak_memory:
                    metrics.update(peak_memory_stats(self.device))
                self.metric_logger.log_dict(metrics, step=self.step)
                tokens_seen, start = 0, time.perf_counter()
            paused = time.perf_counter()
            if decoupled and refresh.due(self.step) and self.step < train.max_steps:
                self._refresh_scales()
            if canary_every and self.step % canary_every == 0 and self._log_canary():
                break  # the forgetting gate: the checkpoint below is the last one
            due = train.save_every and self.step % train.save_every == 0
            if due and self.step < min(stop_at, train.max_steps):  # stop_at saves below
                self.save_resume_checkpoint()
            start += time.perf_counter() - paused
        progress.close()
        if isinstance(self.dataset, MixedText):
            samples = self.step * train.grad_accum * self.world_size * train.batch_size
            read = self.dataset.tokens_read(samples, self.plan.seed)
            total = sum(read.values()) or 1
            self._log(
                "Tokens read by source: "
                + ", ".join(f"{k} {v:,} ({v / total:.1%})" for k, v in read.items())
            )
        if self.step < train.max_steps:  # stop_after_steps or the gate: a checkpoint to resume
            self.save_resume_checkpoint()
            return
        if canary_every and self.step % canary_every != 0:
            self._log_canary()

    def train_step(self) -> tuple[float, int, float | None]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches.

        Returns:
            tuple[float, int, float | None]: the step's mean token loss (over all ranks),
            the tokens trained (all ranks), and the gradient norm before clipping (None
            without ``clip_grad_norm``).
        """
        grad_accum, clip = self.plan.train.grad_accum, self.plan.train.clip_grad_norm
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # [loss sum, tokens]
        for micro in range(grad_accum):
            tokens = self._micro_batch(self.step, micro).to(self.device)  # [b, s]
            labels = shift_labels(tokens)
            loss = self.loss_fn(self.model(tokens), labels)  # mean over this micro-batch
            (loss / grad_accum).backward()
            count = (labels != CROSS_ENTROPY_IGNORE_IDX).sum()
            total += torch.stack([loss.detach().double() * count, count.double()])
        if self.distributed:
            dist.all_reduce(total)
        mean_loss = (total[0] / total[1]).item()
        if not math.isfinite(mean_loss):
            last = self._last_checkpoint()
            raise TrainingDiverged(
                f"loss is {mean_loss} at step {self.step + 1}; stopped before updating the "
                f"weights. Last good checkpoint: {last or 'none (no save_every_n_steps checkpoint yet)'}. "
                "Lower optimizer.lr or raise lr_scheduler.num_warmup_steps"
            )
        grad_norm = None
        if clip is not None:  # inf: the norm is measured and logged, nothing clipped
            norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], clip
            )
            grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, int(total[1].item()), grad_norm

    def _micro_batch(self, step: int, micro: int) -> torch.Tensor:
        """Chunks for (step, micro-batch) on this rank: a pure function of the position.

        Global sample ``p = ((step * A + micro) * W + rank) * b + j`` walks a seeded
        permutation of the corpus, epoch after epoch. Resume needs only the step, and one
        process with ``A * W`` accumulation steps sees exactly the samples of W ranks.
        """
        b, n = self.plan.train.batch_size, len(self.dataset)
        first = ((step * self.plan.train.grad_accum + micro) * self.world_size + self.rank) * b
        rows = []
        for p in range(first, first + b):
            epoch, index = divmod(p, n)
            if self._order[0] != epoch:
                self._order = (epoch, epoch_order(n, self.plan.seed, epoch))
            rows.append(self.dataset[self._order[1][index]])
        return torch.stack(rows)

    @functools.cached_property
    def _domain_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed sample of the domain corpus, as many batches as the probe has (the
        interference probe, conflict scoring); built once, at its first use. The draw is
        ``epoch_order`` with ``seed + 1``: the same on every rank, and not the training order."""
        size = self.plan.stage1.probe_batch_size
        count = len(self.probe_batches) * size
        order = epoch_order(len(self.dataset), self.plan.seed + 1, 0)[:count]
        rows = [self.dataset[i] for i in order]
        return [
            (torch.stack(rows[i : i + size]),) * 2 for i in range(0, len(rows), size)
        ]  # packed text: every token is a label

    def _domain_batches_info(self) -> dict[str, Any]:
        """Where ``_domain_batches`` came from, for the profile."""
        return {
            "source": self.dataset.info.source,
            "batches": len(self._domain_batches),
            "batch_size": self.plan.stage1.probe_batch_size,
            "seq_len": self.dataset.info.max_seq_len,
            "order_seed": self.plan.seed + 1,
        }

    def _refresh_scales(self) -> None:
        """Re-score the units on the probe set and replace their LR scales (S2.2-S2.4)."""
        start = time.perf_counter()
        tuning = self.plan.unit_tuning
        if self.row_scaler is not None:  # rows as units: groups at scale 1, rows rescaled
            rows = row_lr_scales(
                row_importance(self.model, self.probe_batches, progress=self.is_rank_zero),
                tuning.min_scale,
                tuning.direction,
                per_kind=tuning.scoring == "per_kind",
            )
            self.row_scaler.set_scales(rows)
            self.scheduler.set_scales(dict.fromkeys(rows, 1.0), step=self.step)
            scales = {name: float(r.mean()) for name, r in rows.items()}  # logged: row means
        else:
            if tuning.scoring == "conflict":
                batches = self._domain_batches
                scores = unit_conflict(
                    self.model, self.probe_batches, batches, progress=self.is_rank_zero
                )
            else:
                scores = unit_importance(self.model, self.probe_batches, progress=self.is_rank_zero)
            scales = lr_scales(scores, **tuning.scale_options)
            self.scheduler.set_scales(scales, step=self.step)
        self._log(
            f"Refreshed {len(scales)} unit scales at step {self.step} in {time.perf_counter() - start:.1f}s"
        )
        if self.is_rank_zero:
            metrics = {f"scale/{name}": w for name, w in scales.items()}
            metrics["refresh_seconds"] = time.perf_counter() - start
            self.metric_logger.log_dict(metrics, step=self.step)

    # ------------------------------------------------------------------------------ canary

    def _build_canary(self) -> dict[str, list] | None:
        """Held-out general and domain batches from ``canary.general`` / ``canary.domain``."""
        canary = self.plan.canary
        if canary is None:
            return None
        sets = {}
        for name, section in (("general", canary.general), ("domain", canary.domain)):
            data = _instantiate(f"canary.{name}", section, tokenizer=self.tokenizer)
            batches = probe_batches(data, canary.batch_size)
            check = [tokens for tokens, _ in batches]
            named_errors(
                f"canary.{name}", check_bos_leads, f"canary.{name}", check, self.leading_bos
            )
            usable = len(batches) - len(batches) % self.world_size
            if usable == 0:
                raise ConfigError(
                    f"canary.{name} gives {len(batches)} batches, fewer than the {self.world_size} ranks"
                )
            sets[name] = batches[:usable]
        return sets

    def _canary_losses(self) -> dict[str, float]:
        """Held-out loss of each canary set through the full model (works under FSDP)."""
        group = dist.group.WORLD if self.distributed else None
        return {
            name: heldout_loss(
                self.model,
                batches,
                loss_fn=self.loss_fn,
                group=group,
                device=self.device,
                progress_desc=f"canary {name} (batch)",
                show_progress=self.is_rank_zero,
            )
            for name, batches in (self.canary or {}).items()
        }

    def _log_canary(self) -> bool:
        """Measure the canary and log it; True when it crossed a gate that stops the run."""
        start = time.perf_counter()
        losses = self._canary_losses()
        record = {"step": self.step, **{f"{k}_loss": v for k, v in losses.items()}}
        record.update({f"{k}_base": v for k, v in self.canary_base.items()})
        self.canary_history.append(record)
        self._log(
            "Canary at step {}: general {:.4f} (base {:.4f}), domain {:.4f} (base {:.4f})".format(
                self.step,
                losses["general"],
                self.canary_base["general"],
                losses["domain"],
                self.canary_base["domain"],
            )
        )
        if self.is_rank_zero:
            metrics = {f"canary/{k}": v for k, v in record.items() if k != "step"}
            metrics["canary/seconds"] = time.perf_counter() - start
            self.metric_logger.log_dict(metrics, step=self.step)
        crossed = self.plan.canary.gate_crossed(losses["general"], self.canary_base["general"])
        if crossed is not None:
            stop = self.plan.canary.gate_action == "stop"
            where = f"step {self.step}: {crossed}" + (", stopped" if stop else "")
            self.gate = self.gate or where  # the first crossing is the one reported
            if self.is_rank_zero:
                log.warning(f"Forgetting gate crossed at {where}")
            return stop
        return False

    # -------------------------------------------------------------------------------- save

    def save_checkpoint(self, name: str = "final", with_training_state: bool = False) -> Path:
        """Write a complete HF checkpoint (and, for resume, the training state), on rank 0.

        The full state dict is gathered on rank 0: the final checkpoint, and every ``step_N``
        with ``intermediate_checkpoints=full``.

        Args:
            name (str): directory under ``output_dir``.
            with_training_state (bool): also write optimizer, schedule, unit scales and RNG.

        Returns:
            Path: the checkpoint directory.
        """
        path, start = self.output_dir / name, time.perf_counter()
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.model, options=options)
        train_state = None
        if with_training_state:
            train_state = {
                **self._training_state(),
                "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=options),
                # fp32 trainable weights, which the HF checkpoint rounds to the run's dtype
                "fp32_weights": {
                    k: v for k, v in state.items() if v.is_floating_point() and v.dtype != self.dtype
                },
            }  # fmt: skip
        if self.is_rank_zero:
            state = {clean_param_name(k): v for k, v in state.items()}
            architecture = architecture_of(self.model)
            beside = self.trainable.write_beside(
                state, architecture, self.checkpointer.checkpoint_dir
            )

            def write_more(directory: Path) -> None:
                if train_state:
                    torch.save(train_state, directory / TRAINING_STATE_FILE)
                if beside is not None:
                    beside(directory)

            self.checkpointer.save(
                self.trainable.hf_state(state),
                architecture,
                name,
                dtype=self.dtype,
                layer_sources=self.metadata.layer_sources if self.metadata else None,
                extra_json=expansion_extra_json(self.metadata) if self.metadata else None,
                extra_writer=write_more,
            )
        self._saved(path, start, "HF checkpoint")
        return path

    def save_resume_checkpoint(self) -> Path:
        """``checkpoints/step_N``: what a resumed run needs, as ``intermediate_checkpoints`` says.

        ``trainable`` (default): the trained tensors and their optimizer state, every rank its
        own shard, beside a reference to the base checkpoint (``checkpointing.resume``).

        Returns:
            Path: the checkpoint directory.
        """
        name = f"checkpoints/step_{self.step}"
        if self.plan.train.intermediate_checkpoints == "full":
            path = self.save_checkpoint(name, with_training_state=True)
            self._keep_last_checkpoints()
            return path
        path, start = self.output_dir / name, time.perf_counter()
        info = TrainableCheckpointInfo(
            step=self.step,
            base_dir=str(self.checkpointer.checkpoint_dir),
            base=self.base_reference,
            num_layers=len(self.model.layers),
            max_seq_len=self.model.max_seq_len,
            dtype=str(self.dtype).removeprefix("torch."),
            tensors=trainable_names(self.model),
            trainable=self.trainable.to_json(),
        )
        save_trainable_checkpoint(
            path,
            self.model,
            self.optimizer,
            info,
            self._training_state(),
            extra_json=expansion_extra_json(self.metadata) if self.metadata else None,
        )
        self._saved(path, start, "resume checkpoint (trained tensors and optimizer state)")
        self._keep_last_checkpoints()
        return path

    def _keep_last_checkpoints(self) -> None:
        """``keep_last_n_checkpoints``: remove the older ``step_N`` once the newest is complete.

        Each is renamed to a hidden staging name first (atomic), so a crash mid-removal leaves
        nothing a resume could take for a checkpoint (``recover_directories`` removes it).
        """
        keep = self.plan.train.keep_last_n
        if keep is None:
            return
        if self.is_rank_zero:
            for old in self._complete_checkpoints()[:-keep]:
                doomed = staging_directory(old, new_tag())
                old.rename(doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                self._log(f"Removed {old} (keep_last_n_checkpoints={keep})")
        if self.distributed:
            dist.barrier()

    def _training_state(self) -> dict[str, Any]:
        """Step, method, schedule and unit scales, canary record and RNG, for resume."""
        return {
            "step": self.step,
            "method": self.method.name,
            "trainable": self.trainable.to_json(),
            "scheduler": self.scheduler.state_dict(),
            "row_scales": self.row_scaler.state_dict() if self.row_scaler else None,
            "canary_base": self.canary_base,
            "canary_history": self.canary_history,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }

    def _saved(self, path: Path, start: float, what: str) -> None:
        """Log a save's time (gathering and writing), then wait for every rank."""
        if self.is_rank_zero:
            seconds = time.perf_counter() - start
            self._log(f"Saved {what} to {path} in {seconds:.1f}s")
            if self.metric_logger is not None:
                self.metric_logger.log_dict({"save_seconds": seconds}, step=self.step)
        if self.distributed:
            dist.barrier()

    def finish(self) -> None:
        """Final checkpoint, unit-scale picture, canary record and where everything is."""
        stopped = self.step < self.plan.train.max_steps and not self.plan.stage1.only
        if stopped and self.gate is None:
            self._log(
                f"Stopped at step {self.step} of {self.plan.train.max_steps}; "
                "resume_from_checkpoint=True continues"
            )
            return
        if stopped:  # by the forgetting gate: the checkpoint of that step is the result
            final = self.output_dir / "checkpoints" / f"step_{self.step}"
        else:
            final = self.save_checkpoint("final")
        if not self.is_rank_zero:
            return
        lines = (
            [f"HF checkpoint: {final}"]
            if not stopped
            else [
                f"Stopped by the forgetting gate, crossed at {self.gate.removesuffix(', stopped')}; "
                f"the checkpoint of that step: {final} "
                f"(adept-cpt export {final} DIR for an HF model)"
            ]
        )
        if isinstance(self.scheduler, UnitScaledScheduler) and self.scheduler.history:
            picture = plot_scales(self.scheduler.history, self.output_dir / "unit_scales.png")
            lines.append(f"unit LR scales: {picture}")
        if self.canary_history:
            path = self.output_dir / "canary.json"
            write_text_atomically(path, json.dumps(self.canary_history, indent=2))
            lines.append(f"canary: {path}")
            report = retention_from_canary(self.canary_history, self.output_dir, gate=self.gate)
            general, domain = report["general"]["loss_delta"], report["domain"]["loss_delta"]
            lines.append(
                f"retention: {self.output_dir / 'retention.md'} (+ .json, .png, canary.png); "
                f"loss change general {general:+.4f}, domain {domain:+.4f}"
            )
        for key in ("json", "layers", "units"):
            if key in self.profile_files:
                lines.append(f"layer profile ({key}): {self.profile_files[key]}")
        if hasattr(self.metric_logger, "path_to_log_file"):
            lines.append(f"metrics: {self.metric_logger.path_to_log_file()}")
        self._log("Done.\n  " + "\n  ".join(lines))

    def cleanup(self) -> None:
        """Close the logger and the process group."""
        if self.metric_logger is not None:
            self.metric_logger.close()
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    # ----------------------------------------------------------------------------- helpers

    def _check_tokenizer_fits(self) -> None:
        """Refuse a tokenizer that can produce ids the model's embedding does not have."""
        ids, rows = vocabulary_size(self.tokenizer), self.architecture.vocab_size
        if ids is not None and ids > rows:
            raise ConfigError(
                f"tokenizer ({self.plan.tokenizer._component_}, path "
                f"{self.plan.tokenizer.get('path')}) has {ids:,} token ids but the model in "
                f"checkpointer.checkpoint_dir has an embedding of {rows:,} rows: point "
                "tokenizer.path at the checkpoint's own tokenizer"
            )

    def _copy_fills(self) -> dict[str, float]:
        """How a copy starts (``expansion.copy_init``; ``auto`` is the family's)."""
        return named_errors(
            "expansion.copy_init",
            copy_fills,
            self.architecture.family_record,
            self.plan.stage1.copy_init,
        )

    def _gate_multipliers(self) -> dict[str, float]:
        """Learning-rate multipliers of the units that open a ``zero_post_norm`` copy."""
        if self.metadata is None:
            return {}
        multiplier = self.plan.stage1.gate_lr_multiplier or GATE_LR_MULTIPLIER
        gates = gate_units(
            self.architecture.family_record,
            self.metadata.copy_positions,
            self.plan.stage1.copy_init,
        )
        if gates:
            self._log(f"Copy gains {len(gates)} units at {multiplier:g}x the learning rate")
        return dict.fromkeys(gates, multiplier)

    def _find_resume_point(self) -> ResumePoint:
        """The newest resumable checkpoint, checked against the base model and the method.

        Raises:
            ConfigError: no checkpoint, one of another model, or one of another method.
        """
        directory = self._last_checkpoint()
        if directory is None:
            raise ConfigError(
                f"resume_from_checkpoint=True but {self.output_dir / 'checkpoints'} holds no "
                f"step_N checkpoint with {TRAINING_STATE_FILE}: run without resume, or set "
                "output_dir to the run to resume"
            )
        base = self.architecture
        metadata = named_errors(
            f"resume checkpoint {directory}", load_expansion_metadata, directory
        )
        full = not is_trainable_checkpoint(directory)
        if full:
            reader = HFCheckpointer(str(directory), str(self.output_dir))
            depth, max_seq_len = reader.architecture.num_layers, reader.architecture.max_seq_len
            expected = base.expanded(metadata.layer_sources) if metadata else base
            same_base = reader.architecture == dataclasses.replace(
                expected, num_layers=depth, max_seq_len=max_seq_len
            )
        else:
            reader = self.checkpointer
            info = named_errors("resume_from_checkpoint", TrainableCheckpointInfo.read, directory)
            named_errors("resume_from_checkpoint", check_trainable_files, directory, info)
            named_errors(
                "resume_from_checkpoint", check_base_reference, info.base, reader, str(directory)
            )
            depth, same_base = info.num_layers, True
        expected_depth = metadata.num_layers if metadata else base.num_layers
        if (
            not same_base
            or depth != expected_depth
            or (metadata and metadata.base_num_layers != base.num_layers)
        ):
            raise ConfigError(
                f"resume checkpoint {directory} is of another model than "
                f"checkpointer.checkpoint_dir={self.checkpointer.checkpoint_dir}: resume only the "
                "run this config started, or change output_dir"
            )
        state_file = directory / TRAINING_STATE_FILE
        try:
            state = torch.load(state_file, weights_only=True)
        except Exception as e:  # torch.load raises pickle, zip and EOF errors of many kinds
            raise ConfigError(
                f"{state_file} is not a readable training state ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else 'no detail'}): it is truncated or "
                "damaged; delete that checkpoint directory to resume from the one before"
            ) from None
        if state["method"] != self.method.name:
            raise ConfigError(
                f"resume checkpoint {directory} was trained with method={state['method']}, the "
                f"config says method={self.method.name}: resume with the run's own method"
            )
        return ResumePoint(directory, metadata, reader, state, full)

    def _load_training_state(self, resume: ResumePoint) -> None:
        """Optimizer, fp32 weights, schedule, step, canary record and RNG of the checkpoint."""
        state = resume.state
        if not resume.full:
            named_errors(
                "resume_from_checkpoint",
                load_trainable_checkpoint,
                resume.directory,
                self.model,
                self.optimizer,
                state,
            )
        else:
            set_optimizer_state_dict(
                self.model,
                self.optimizer,
                state["optimizer"],
                options=StateDictOptions(full_state_dict=True),
            )
        if resume.full and state.get("fp32_weights") and self.plan.fp32_trainable:
            result = set_model_state_dict(
                self.model,
                state["fp32_weights"],
                options=StateDictOptions(full_state_dict=True, strict=False),
            )
            if result.unexpected_keys:
                raise ConfigError(
                    f"resume checkpoint {resume.directory} holds fp32 weights the model lacks "
                    f"({sorted(result.unexpected_keys)[:3]} ...): resume with the run's own config"
                )
        self.scheduler.load_state_dict(state["scheduler"])
        if self.row_scaler is not None and state.get("row_scales"):
            self.row_scaler.load_state_dict(state["row_scales"])
        self.step = state["step"]
        self.canary_base = state["canary_base"]
        self.canary_history = state["canary_history"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])

    def _complete_checkpoints(self) -> list[Path]:
        """Complete ``checkpoints/step_N`` directories, oldest first."""
        found = [
            p
            for p in (self.output_dir / "checkpoints").glob("step_*")
            if (p / TRAINING_STATE_FILE).is_file() and p.name.removeprefix("step_").isdigit()
        ]
        return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))

    def _last_checkpoint(self) -> Path | None:
        """The newest ``checkpoints/step_N`` holding a training state, if any."""
        found = self._complete_checkpoints()
        return found[-1] if found else None

    def _base_lr(self) -> float:
        if isinstance(self.scheduler, UnitScaledScheduler):
            return self.scheduler.base_lr()
        return self.optimizer.param_groups[0]["lr"]

    def _log(self, message: str) -> None:
        if self.is_rank_zero:
            log.info(message)


def _instantiate(field: str, section: Any, **kwargs: Any) -> Any:
    """Build a config section's component; a user error names the section."""
    return named_errors(field, tt_config.instantiate, section, **kwargs)


def recipe_main(argv: list[str]) -> None:
    """Parse the command line, plan the run and run it top to bottom.

    Args:
        argv (list[str]): ``--config NAME_OR_PATH [key=value ...]``.
    """
    plan = RunPlan.from_config(resolved_config(argv, "adept_cpt"))
    recipe = AdeptCPTRecipe(plan)
    try:
        recipe.setup()
        recipe.stage1()
        if not plan.stage1.only:
            recipe.setup_training()
            recipe.train()
        recipe.finish()
    finally:
        recipe.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; a user error prints one line naming the fix and exits with 1.

    ``ADEPT_DEBUG=1`` re-raises such errors with their traceback.

    Returns:
        int: exit status.
    """
    with user_errors("adept_cpt", TrainingDiverged):
        recipe_main(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
