"""ADEPT continual pretraining: ``tune run adept_cpt --config NAME_OR_PATH [key=value ...]``.

Installed as the top-level module ``adept_cpt`` so that ``tune run adept_cpt`` (one process) and
``tune run --nproc_per_node N adept_cpt`` (torchrun, FSDP2) find it from any directory. The
recipe reads top to bottom, as the method does:

    setup         config, seed, device, dtype, process group; checkpointer, tokenizer, data
    load          the base model M0 with its Hugging Face weights
    stage 1       probe general competence -> select the k least critical layers -> expand
                  (each copy right after its source, output projections zero) -> freeze
    stage 2       train the copies on the domain corpus with one optimizer param group per unit,
                  learning rates scaled by unit importance and re-scored every N steps,
                  a forgetting canary (general vs domain held-out loss) every M steps
    save          a Hugging Face checkpoint with L + k layers and the expansion metadata

``method`` switches to the baselines and ablations of the spec with the same data, seed and
budget: ``full``, ``llama_pro``, ``no_stage1``, ``no_stage2``, ``random``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torchtune import config as tt_config
from torchtune import training, utils
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX
from torchtune.modules import TransformerDecoder, TransformerSelfAttentionLayer
from tqdm import tqdm

from adept_components.checkpointing import HFCheckpointer, check_state_dict_matches
from adept_components.config import (
    ConfigError,
    check_positive_int,
    check_run_fields,
    resolved_config,
    user_errors,
)
from adept_components.data import probe_batches
from adept_components.evaluation import retention_from_canary
from adept_components.expansion import (
    ExpansionMetadata,
    expand_model,
    expand_state_dict,
    expansion_extra_json,
    freeze_all_but,
    load_expansion_metadata,
    uniform_source_layers,
)
from adept_components.importance import (
    IMPORTANCE_METHODS,
    check_profile_matches,
    check_selected_layers,
    profile_layers,
    read_profile,
    select_layers,
    unit_importance,
    write_profile,
)
from adept_components.models import architecture_of
from adept_components.models.tokenizers import vocabulary_size
from adept_components.optim import (
    RefreshPolicy,
    UnitScaledScheduler,
    lr_scales,
    plot_scales,
    resolve_optimizer_class,
    unit_optimizer,
)
from adept_components.precision import keep_trainable_in_fp32
from adept_components.progress import progress_bar

log = utils.get_logger("INFO")

METHODS = ("adept", "full", "llama_pro", "no_stage1", "no_stage2", "random")
# Which methods expand, probe, and tune with importance-scaled (decoupled) learning rates.
_EXPANDS = {"adept", "llama_pro", "no_stage2", "random"}
_PROBES = {"adept", "no_stage1", "no_stage2"}
_DECOUPLED = {"adept", "no_stage1", "random"}
TRAINING_STATE_FILE = "training_state.pt"
REQUIRED_KEYS = (
    "output_dir",
    "seed",
    "device",
    "dtype",
    "model",
    "tokenizer",
    "checkpointer",
    "metric_logger",
    "method",
    "expansion",
    "dataset",
    "optimizer",
    "lr_scheduler",
    "batch_size",
    "max_steps",
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class AdeptCPTRecipe:
    """One ADEPT (or baseline) run, configured by a torchtune-style YAML.

    Args:
        cfg (DictConfig): the full run config (see ``recipe_configs/``).

    Raises:
        ConfigError: a missing or invalid field, before anything is written.
    """

    def __init__(self, cfg: DictConfig) -> None:
        _validate(cfg)
        self.cfg = cfg
        self.method: str = cfg.method
        self.output_dir = Path(cfg.output_dir).expanduser()
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.device = utils.get_device(cfg.device)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.world_size, self.rank = utils.get_world_size_and_rank()
        self.is_rank_zero = self.rank == 0
        self.dtype = training.get_dtype(cfg.dtype, device=self.device)
        # Trainable weights (and their gradients and AdamW state) in fp32 in a bf16 run.
        self.fp32_trainable = cfg.get("trainable_dtype") == "fp32" and self.dtype != torch.float32
        self.seed = training.set_seed(cfg.seed)
        self.batch_size: int = cfg.batch_size
        self.grad_accum: int = cfg.get("gradient_accumulation_steps", 1)
        self.max_steps: int = cfg.max_steps
        self.metric_logger = None  # built after everything that can reject the config
        self.step = 0
        self.canary_history: list[dict[str, float]] = []

    # ------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        """Checkpointer -> tokenizer -> data -> base model, then the logger.

        Everything that can reject the config or its files runs before the first write.
        """
        cfg = self.cfg
        self.checkpointer: HFCheckpointer = tt_config.instantiate(cfg.checkpointer)
        self.tokenizer = tt_config.instantiate(cfg.tokenizer)
        self._check_tokenizer_fits()
        self.resume_dir = (
            self._find_resume_checkpoint() if cfg.get("resume_from_checkpoint") else None
        )
        self.resume_metadata = self._check_resume_checkpoint() if self.resume_dir else None
        self._check_expansion()
        self._check_seq_len(cfg.dataset.max_seq_len, "dataset.max_seq_len")
        self.probe = None
        if self.method in _PROBES or self.method in _DECOUPLED:
            self._check_seq_len(cfg.probe.max_seq_len, "probe.max_seq_len")
            self.probe = tt_config.instantiate(cfg.probe, tokenizer=self.tokenizer)
            self.probe_batches = probe_batches(self.probe, cfg.get("probe_batch_size", 8))
        self.canary = self._build_canary()
        # Last of the inputs: the largest, and with dataset.cache_dir the only one written.
        self.dataset = tt_config.instantiate(cfg.dataset, tokenizer=self.tokenizer)
        if len(self.dataset) < self.batch_size * self.world_size:
            raise ConfigError(
                f"the domain corpus has {len(self.dataset)} chunks of {cfg.dataset.max_seq_len} "
                f"tokens, fewer than one global batch ({self.batch_size} x {self.world_size} ranks)"
            )

        self.base_state = self._load_base_state()
        if self.is_rank_zero:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.metric_logger = tt_config.instantiate(cfg.metric_logger)
            self.metric_logger.log_config(cfg)
        corpus = self.dataset.info
        self._log(
            f"Base model: {self.checkpointer.architecture.family}, "
            f"{self.checkpointer.architecture.num_layers} layers; domain corpus: "
            f"{corpus.num_tokens:,} tokens in {len(self.dataset):,} chunks of {corpus.max_seq_len}; "
            f"method={self.method}; world size {self.world_size}"
        )

    # ----------------------------------------------------------------------------- stage 1

    def stage1(self) -> None:
        """Probe -> select -> expand -> freeze (spec S1.1-S1.5), or the method's variant."""
        self.metadata: ExpansionMetadata | None = None
        if self.resume_dir is not None:
            self.metadata = self.resume_metadata
            trainable = (
                self._expand(self.metadata)
                if self.metadata
                else self._trainable_without_expansion()
            )
        else:
            sources = self._select_layers()
            if self.method in _EXPANDS:
                self.metadata = ExpansionMetadata(
                    self.checkpointer.architecture.num_layers, sources
                )
                trainable = self._expand(self.metadata)
            else:
                trainable = self._trainable_without_expansion(sources)
        self.trainable_layers = trainable
        summary = (
            freeze_all_but(self.model, trainable)
            if trainable is not None
            else _unfreeze_all(self.model)
        )
        if self.metadata is not None:
            self._log(
                f"Expanded {self.metadata.base_num_layers} -> {self.metadata.num_layers} layers: "
                f"copies of {list(self.metadata.source_layers)} at {self.metadata.copy_positions}"
            )
        self._log(f"Trainable layers {trainable if trainable is not None else 'all'}; {summary}")

    def _select_layers(self) -> list[int] | None:
        """The base layers to copy (or, for ``no_stage1``, to train); None for ``full``."""
        cfg, num_layers = self.cfg.expansion, self.checkpointer.architecture.num_layers
        if self.method == "full":
            return None
        if cfg.get("layers"):
            return check_selected_layers(list(cfg.layers), num_layers)
        k = cfg.num_layers
        if self.method == "llama_pro":
            return uniform_source_layers(num_layers, k)
        if self.method == "random":
            return sorted(random.Random(self.cfg.seed).sample(range(num_layers), k))
        base_model = self._build_model(
            partial(tt_config.instantiate, self.cfg.model), self.base_state
        )
        if cfg.get("profile"):
            profile = read_profile(cfg.profile)
            check_profile_matches(profile, base_model, self.checkpointer.checkpoint_dir)
            self._log(f"Layer importance read from {cfg.profile}")
        else:
            start = time.perf_counter()
            profile = profile_layers(
                base_model,
                self.probe_batches,
                self.probe.info,
                k,
                method=cfg.get("importance", "mask-out"),
                checkpoint_dir=self.checkpointer.checkpoint_dir,
                progress=self.is_rank_zero,
            )
            self._log(
                f"Probed {len(base_model.layers)} layers in {time.perf_counter() - start:.1f}s"
            )
        selected = select_layers(profile.scores, k)
        if self.is_rank_zero:
            profile = dataclasses.replace(profile, selected_layers=list(selected))
            files = write_profile(profile, self.output_dir / "profile")
            self.profile_files = files
            scores = ", ".join(f"{s:.4f}" for s in profile.scores)
            self._log(f"Layer importance ({profile.method}): [{scores}]")
        self._log(f"Selected layers {list(selected)} (k={k})")
        del base_model
        return list(selected)

    def _expand(self, metadata: ExpansionMetadata) -> list[int]:
        """Build the (L+k)-layer model with function-preserving copies; return copy positions."""
        if self.resume_dir is not None:
            state = self._load_resume_state(metadata)
        else:
            state = expand_state_dict(self.base_state, metadata)
        self.model = self._build_model(
            lambda: expand_model(partial(tt_config.instantiate, self.cfg.model), metadata), state
        )
        self.base_state = None
        return metadata.copy_positions

    def _trainable_without_expansion(self, sources: list[int] | None = None) -> list[int] | None:
        """``full`` trains everything (None); ``no_stage1`` trains the selected original layers."""
        state = self._load_resume_state(None) if self.resume_dir is not None else self.base_state
        self.model = self._build_model(partial(tt_config.instantiate, self.cfg.model), state)
        self.base_state = None
        if self.method == "full":
            return None
        if sources is None:  # resume of no_stage1: the layers are in the training state
            sources = torch.load(self.resume_dir / TRAINING_STATE_FILE, weights_only=True)[
                "trainable_layers"
            ]
        return list(sources)

    # ----------------------------------------------------------------------------- stage 2

    def setup_training(self) -> None:
        """Precision, distribute, then optimizer (one group per unit) -> LR schedule -> resume."""
        cfg = self.cfg
        if self.fp32_trainable:
            kept = keep_trainable_in_fp32(self.model, self.trainable_layers, self.dtype)
            self._log(
                f"Trainable weights in fp32 ({sum(p.numel() for m in kept for p in m.parameters()):,} "
                f"parameters), computed in {cfg.dtype} under autocast"
            )
        if cfg.get("enable_activation_checkpointing", False):
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
        if cfg.get("compile", False):
            training.compile_model(self.model, verbose=False)
        self.loss_fn = tt_config.instantiate(cfg.loss) if "loss" in cfg else _default_loss()
        if hasattr(self.loss_fn, "num_output_chunks"):
            self.model.set_num_output_chunks(self.loss_fn.num_output_chunks)

        optimizer_kwargs = {
            k: v for k, v in OmegaConf.to_container(cfg.optimizer).items() if k != "_component_"
        }
        self.decoupled = self.method in _DECOUPLED
        if self.trainable_layers is None:
            self.optimizer = tt_config.instantiate(
                cfg.optimizer, [p for p in self.model.parameters() if p.requires_grad]
            )
        else:
            self.optimizer = unit_optimizer(
                self.model, self.trainable_layers, cfg.optimizer._component_, **optimizer_kwargs
            )
        inner = tt_config.instantiate(
            cfg.lr_scheduler, self.optimizer, num_training_steps=self.max_steps
        )
        self.scheduler = (
            UnitScaledScheduler(self.optimizer, inner)
            if self.trainable_layers is not None
            else inner
        )
        tuning = cfg.get("unit_tuning", {})
        self.refresh = RefreshPolicy(
            refresh_every=tuning.get("refresh_every", 500),
            refresh_at_start=tuning.get("refresh_at_start", False),
        )
        self.scale_options = {
            "min_scale": tuning.get("min_scale", 0.0),
            "separate_norm_range": tuning.get("separate_norm_range", False),
            "direction": tuning.get("direction", "general"),
        }
        if self.resume_dir is not None:
            self._load_training_state()
        self.canary_base = self._canary_losses() if self.step == 0 else self.canary_base

    def train(self) -> None:
        """The training loop: accumulate, step, refresh unit scales, canary, checkpoint."""
        cfg = self.cfg
        log_every = cfg.get("log_every_n_steps", 1)
        save_every = cfg.get("save_every_n_steps", 0)
        canary_every = cfg.get("canary", {}).get("every_n_steps", 0) if self.canary else 0
        if self.decoupled and self.step == 0 and self.refresh.due(0):
            self._refresh_scales()
        self.model.train()
        progress = tqdm(
            total=self.max_steps,
            initial=self.step,
            disable=not self.is_rank_zero,
            desc="train",
            dynamic_ncols=True,
        )
        tokens_seen, start = 0, time.perf_counter()
        stop_at = self.max_steps
        if cfg.get("stop_after_steps"):
            stop_at = min(self.max_steps, self.step + cfg.stop_after_steps)
        while self.step < stop_at:
            loss, num_tokens = self._train_step()
            self.step += 1
            tokens_seen += num_tokens
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}")
            if self.is_rank_zero and self.step % log_every == 0:
                elapsed = time.perf_counter() - start
                self.metric_logger.log_dict(
                    {
                        "loss": loss,
                        "lr": self._base_lr(),
                        "tokens_per_second": tokens_seen / elapsed,
                    },
                    step=self.step,
                )
                tokens_seen, start = 0, time.perf_counter()
            if self.decoupled and self.refresh.due(self.step) and self.step < self.max_steps:
                self._refresh_scales()
            if canary_every and self.step % canary_every == 0:
                self._log_canary()
            if save_every and self.step % save_every == 0 and self.step < self.max_steps:
                self.save_checkpoint(f"checkpoints/step_{self.step}", with_training_state=True)
        progress.close()
        if self.step < self.max_steps:  # stop_after_steps: leave a checkpoint to resume from
            self.save_checkpoint(f"checkpoints/step_{self.step}", with_training_state=True)
            return
        if canary_every and self.step % canary_every != 0:
            self._log_canary()

    def _train_step(self) -> tuple[float, int]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches.

        Returns:
            tuple[float, int]: the step's mean token loss (over all ranks) and tokens trained.
        """
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # [loss sum, tokens]
        for micro in range(self.grad_accum):
            tokens = self._micro_batch(self.step, micro).to(self.device)  # [b, s]
            labels = torch.cat(
                [tokens[:, 1:], torch.full_like(tokens[:, :1], CROSS_ENTROPY_IGNORE_IDX)], dim=1
            )
            logits = self.model(tokens)
            loss = self.loss_fn(logits, labels)  # mean over this micro-batch's tokens
            (loss / self.grad_accum).backward()
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
        if self.cfg.get("clip_grad_norm") is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad],
                float(self.cfg.clip_grad_norm),
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, int(total[1].item())

    def _micro_batch(self, step: int, micro: int) -> torch.Tensor:
        """Chunks for (step, micro-batch) on this rank: a pure function of the position.

        Global sample ``p = ((step * A + micro) * W + rank) * b + j`` walks a seeded
        permutation of the corpus, epoch after epoch. Resume needs only the step, and one
        process with ``A * W`` accumulation steps sees exactly the samples of W ranks.
        """
        n = len(self.dataset)
        first = ((step * self.grad_accum + micro) * self.world_size + self.rank) * self.batch_size
        rows = []
        for p in range(first, first + self.batch_size):
            epoch, index = divmod(p, n)
            rows.append(self.dataset[self._epoch_order(epoch)[index]])
        return torch.stack(rows)

    def _epoch_order(self, epoch: int) -> list[int]:
        if getattr(self, "_order_epoch", None) != epoch:
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._order = torch.randperm(len(self.dataset), generator=gen).tolist()
            self._order_epoch = epoch
        return self._order

    def _refresh_scales(self) -> None:
        """Re-score the units on the probe set and replace their LR scales (S2.2-S2.4)."""
        start = time.perf_counter()
        scores = unit_importance(self.model, self.probe_batches, progress=self.is_rank_zero)
        scales = lr_scales(scores, **self.scale_options)
        self.scheduler.set_scales(scales, step=self.step)
        self._log(
            f"Refreshed {len(scales)} unit scales at step {self.step} in {time.perf_counter() - start:.1f}s"
        )
        if self.is_rank_zero:
            self.metric_logger.log_dict(
                {f"scale/{name}": w for name, w in scales.items()}, step=self.step
            )

    # ------------------------------------------------------------------------------ canary

    def _build_canary(self) -> dict[str, list] | None:
        """Held-out general and domain batches from ``canary.general`` / ``canary.domain``."""
        canary = self.cfg.get("canary")
        if not canary or not canary.get("every_n_steps"):
            return None
        sets = {}
        for name in ("general", "domain"):
            if name not in canary:
                raise ConfigError(
                    f"canary.every_n_steps is set but canary.{name} (a probe_dataset) is missing"
                )
            self._check_seq_len(canary[name].max_seq_len, f"canary.{name}.max_seq_len")
            data = tt_config.instantiate(canary[name], tokenizer=self.tokenizer)
            batches = probe_batches(data, canary.get("batch_size", 8))
            usable = len(batches) - len(batches) % self.world_size
            if usable == 0:
                raise ConfigError(
                    f"canary.{name} gives {len(batches)} batches, fewer than the {self.world_size} ranks"
                )
            sets[name] = batches[:usable]
        return sets

    def _canary_losses(self) -> dict[str, float]:
        if not self.canary:
            return {}
        return {name: self._eval_loss(batches, name) for name, batches in self.canary.items()}

    def _eval_loss(self, batches: list[tuple[torch.Tensor, torch.Tensor]], name: str) -> float:
        """Token-mean loss through the full model forward (works under FSDP): ranks split batches."""
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        was_training = self.model.training
        self.model.eval()
        mine = batches[self.rank :: self.world_size]
        bar = progress_bar(len(mine), f"canary {name} (batch)", self.is_rank_zero)
        with torch.no_grad(), bar:
            for tokens, labels in mine:
                bar.update()
                tokens, labels = tokens.to(self.device), labels.to(self.device)
                shifted = torch.cat(
                    [labels[:, 1:], torch.full_like(labels[:, :1], CROSS_ENTROPY_IGNORE_IDX)], 1
                )
                count = (shifted != CROSS_ENTROPY_IGNORE_IDX).sum()
                loss = self.loss_fn(self.model(tokens), shifted)
                total += torch.stack([loss.double() * count, count.double()])
        self.model.train(was_training)
        if self.distributed:
            dist.all_reduce(total)
        return (total[0] / total[1]).item()

    def _log_canary(self) -> None:
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
            self.metric_logger.log_dict(
                {f"canary/{k}": v for k, v in record.items() if k != "step"}, step=self.step
            )

    # -------------------------------------------------------------------------------- save

    def save_checkpoint(self, name: str = "final", with_training_state: bool = False) -> Path:
        """Write an HF checkpoint (and, for resume, the training state), atomically, on rank 0.

        Args:
            name (str): directory under ``output_dir``.
            with_training_state (bool): also write optimizer, schedule, unit scales and RNG.

        Returns:
            Path: the checkpoint directory.
        """
        path = self.output_dir / name
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.model, options=options)
        train_state = self._training_state(options) if with_training_state else None
        if train_state is not None:  # fp32 trainable weights, which the HF checkpoint rounds
            train_state["fp32_weights"] = {
                k: v for k, v in state.items() if v.is_floating_point() and v.dtype != self.dtype
            }
        if self.is_rank_zero:
            start = time.perf_counter()
            self.checkpointer.save(
                {_clean(k): v for k, v in state.items()},
                architecture_of(self.model),
                name,
                dtype=self.dtype,
                layer_sources=self.metadata.layer_sources if self.metadata else None,
                extra_json=expansion_extra_json(self.metadata) if self.metadata else None,
                extra_writer=(lambda d: torch.save(train_state, d / TRAINING_STATE_FILE))
                if train_state
                else None,
            )
            self._log(f"Saved HF checkpoint to {path} in {time.perf_counter() - start:.1f}s")
        if self.distributed:
            dist.barrier()
        return path

    def finish(self) -> None:
        """Final checkpoint, unit-scale picture, canary record and where everything is."""
        if self.step < self.max_steps and not self.cfg.get("stage1_only", False):
            self._log(
                f"Stopped at step {self.step} of {self.max_steps}; resume_from_checkpoint=True continues"
            )
            return
        final = self.save_checkpoint("final")
        if not self.is_rank_zero:
            return
        lines = [f"HF checkpoint: {final}"]
        scheduler = getattr(self, "scheduler", None)
        if isinstance(scheduler, UnitScaledScheduler) and scheduler.history:
            lines.append(
                f"unit LR scales: {plot_scales(scheduler.history, self.output_dir / 'unit_scales.png')}"
            )
        if self.canary_history:
            path = self.output_dir / "canary.json"
            path.write_text(json.dumps(self.canary_history, indent=2))
            lines.append(f"canary: {path}")
            report = retention_from_canary(self.canary_history, self.output_dir)
            general, domain = report["general"]["loss_delta"], report["domain"]["loss_delta"]
            lines.append(
                f"retention: {self.output_dir / 'retention.md'} (+ .json, .png, canary.png); "
                f"loss change general {general:+.4f}, domain {domain:+.4f}"
            )
        for key in ("json", "layers", "units"):
            if key in getattr(self, "profile_files", {}):
                lines.append(f"layer profile ({key}): {self.profile_files[key]}")
        lines.append(
            f"metrics: {self.metric_logger.path_to_log_file() if hasattr(self.metric_logger, 'path_to_log_file') else self.cfg.metric_logger.get('log_dir')}"
        )
        self._log("Done.\n  " + "\n  ".join(lines))

    def cleanup(self) -> None:
        """Close the logger and the process group."""
        if self.metric_logger is not None:
            self.metric_logger.close()
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    # ----------------------------------------------------------------------------- helpers

    def _load_base_state(self) -> dict[str, torch.Tensor] | None:
        if self.resume_dir is not None:
            return None
        return self.checkpointer.load_state_dict()

    def _build_model(
        self, build: Callable[[], TransformerDecoder], state: dict[str, torch.Tensor]
    ) -> TransformerDecoder:
        """Build on the meta device, check names and shapes, then take the weights in place."""
        with torch.device("meta"):
            model = build()
        check_state_dict_matches(model, state, self.checkpointer.architecture.family)
        state = {k: v.to(device=self.device, dtype=self.dtype) for k, v in state.items()}
        model.load_state_dict(state, assign=True)
        with self.device:
            for module in model.modules():  # RoPE caches are buffers outside the state dict
                if hasattr(module, "rope_init"):
                    module.rope_init()
        return model

    def _check_tokenizer_fits(self) -> None:
        """Refuse a tokenizer that can produce ids the model's embedding does not have."""
        ids, rows = vocabulary_size(self.tokenizer), self.checkpointer.architecture.vocab_size
        if ids is not None and ids > rows:
            raise ConfigError(
                f"tokenizer ({self.cfg.tokenizer._component_}, path "
                f"{self.cfg.tokenizer.get('path')}) has {ids:,} token ids but the model in "
                f"checkpointer.checkpoint_dir has an embedding of {rows:,} rows: point "
                "tokenizer.path at the checkpoint's own tokenizer"
            )

    def _check_seq_len(self, seq_len: int, field: str) -> None:
        limit = self.cfg.model.get("max_seq_len") or self.checkpointer.architecture.max_seq_len
        if seq_len > limit:
            raise ConfigError(
                f"{field}={seq_len} exceeds the model's max_seq_len={limit}; lower {field} or raise "
                "model.max_seq_len (the model's RoPE cache length)"
            )

    def _find_resume_checkpoint(self) -> Path:
        found = sorted(
            (
                p
                for p in (self.output_dir / "checkpoints").glob("step_*")
                if (p / TRAINING_STATE_FILE).is_file()
            ),
            key=lambda p: int(p.name.removeprefix("step_")),
        )
        if not found:
            raise ConfigError(
                f"resume_from_checkpoint=True but {self.output_dir / 'checkpoints'} holds no step_N "
                f"checkpoint with {TRAINING_STATE_FILE}: run without resume, or set output_dir to the run to resume"
            )
        return found[-1]

    def _check_resume_checkpoint(self) -> ExpansionMetadata | None:
        """Refuse a resume checkpoint of another model than ``checkpointer.checkpoint_dir``."""
        base_arch = self.checkpointer.architecture
        metadata = load_expansion_metadata(self.resume_dir)
        reader = HFCheckpointer(str(self.resume_dir), str(self.output_dir))
        expected = dataclasses.replace(
            base_arch,
            num_layers=metadata.num_layers if metadata else base_arch.num_layers,
            max_seq_len=reader.architecture.max_seq_len,
        )
        if reader.architecture != expected or (
            metadata and metadata.base_num_layers != base_arch.num_layers
        ):
            raise ConfigError(
                f"resume checkpoint {self.resume_dir} is of another model than "
                f"checkpointer.checkpoint_dir={self.checkpointer.checkpoint_dir}: resume only the run "
                "this config started, or change output_dir"
            )
        self.resume_reader = reader
        return metadata

    def _check_expansion(self) -> None:
        """Check k and an explicit layer list against the base model's depth."""
        if self.method == "full":
            return
        num_layers, expansion = self.checkpointer.architecture.num_layers, self.cfg.expansion
        if expansion.get("layers"):
            try:
                check_selected_layers(list(expansion.layers), num_layers)
            except ValueError as e:
                raise ConfigError(f"expansion.layers: {e}") from None
        elif not 1 <= expansion.num_layers < num_layers:
            raise ConfigError(
                f"expansion.num_layers={expansion.num_layers}: k={expansion.num_layers} but the base "
                f"model has {num_layers} layers (valid k: 1..{num_layers - 1})"
            )

    def _load_resume_state(self, metadata: ExpansionMetadata | None) -> dict[str, torch.Tensor]:
        self._log(f"Resuming from {self.resume_dir}")
        return self.resume_reader.load_state_dict()

    def _training_state(self, options: StateDictOptions) -> dict[str, Any]:
        return {
            "step": self.step,
            "method": self.method,
            "trainable_layers": self.trainable_layers,
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=options),
            "scheduler": self.scheduler.state_dict(),
            "canary_base": getattr(self, "canary_base", {}),
            "canary_history": self.canary_history,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }

    def _load_training_state(self) -> None:
        state = torch.load(self.resume_dir / TRAINING_STATE_FILE, weights_only=True)
        if state["method"] != self.method:
            raise ConfigError(
                f"resume checkpoint was trained with method={state['method']}, the config says {self.method}"
            )
        set_optimizer_state_dict(
            self.model,
            self.optimizer,
            state["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
        if state.get("fp32_weights") and self.fp32_trainable:
            result = set_model_state_dict(
                self.model,
                state["fp32_weights"],
                options=StateDictOptions(full_state_dict=True, strict=False),
            )
            if result.unexpected_keys:
                raise ConfigError(
                    f"resume checkpoint {self.resume_dir} holds fp32 weights the model lacks "
                    f"({sorted(result.unexpected_keys)[:3]} ...): resume with the run's own config"
                )
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.canary_base = state["canary_base"]
        self.canary_history = state["canary_history"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])

    def _last_checkpoint(self) -> Path | None:
        try:
            return self._find_resume_checkpoint()
        except ConfigError:
            return None

    def _base_lr(self) -> float:
        if isinstance(self.scheduler, UnitScaledScheduler):
            return self.scheduler.base_lr()
        return self.optimizer.param_groups[0]["lr"]

    def _log(self, message: str) -> None:
        if self.is_rank_zero:
            log.info(message)


def _default_loss() -> torch.nn.Module:
    from torchtune.modules.loss import CEWithChunkedOutputLoss

    return CEWithChunkedOutputLoss()


def _unfreeze_all(model: torch.nn.Module) -> Any:
    model.requires_grad_(True)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable: {total:,} / {total:,} (100.00%)"


def _clean(key: str) -> str:
    return key.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def _validate(cfg: DictConfig) -> None:
    """Check the whole config once, before any work; name the field and the fix."""
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"config lacks required key(s) {missing}")
    for key in (
        "model",
        "tokenizer",
        "checkpointer",
        "metric_logger",
        "dataset",
        "optimizer",
        "lr_scheduler",
    ):
        if not isinstance(cfg[key], DictConfig) or "_component_" not in cfg[key]:
            raise ConfigError(f"`{key}` must be a mapping with a `_component_` entry")
    check_run_fields(cfg)
    if cfg.seed is not None and (not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool)):
        raise ConfigError(f"seed={cfg.seed!r} must be an integer")
    trainable_dtype = cfg.get("trainable_dtype")
    if trainable_dtype not in (None, "fp32", cfg.dtype):
        raise ConfigError(
            f"trainable_dtype={trainable_dtype!r} with dtype={cfg.dtype}: use fp32 (trainable "
            "weights kept in fp32) or null (the run's dtype)"
        )
    if cfg.method not in METHODS:
        raise ConfigError(f"method={cfg.method!r}; use one of {', '.join(METHODS)}")
    for key in ("batch_size", "max_steps"):
        check_positive_int(cfg, key)
    for key in ("gradient_accumulation_steps", "probe_batch_size", "stop_after_steps"):
        check_positive_int(cfg, key, required=False)
    for key in ("save_every_n_steps", "log_every_n_steps"):
        if cfg.get(key) is not None and (not isinstance(cfg[key], int) or cfg[key] < 0):
            raise ConfigError(f"{key}={cfg[key]!r} must be a non-negative integer")
    if cfg.get("optimizer_in_bwd"):
        raise ConfigError(
            "optimizer_in_bwd=True forces one learning rate on every parameter, which defeats "
            "per-unit learning rates; remove it"
        )
    tuning = cfg.get("unit_tuning") or {}
    try:
        RefreshPolicy(tuning.get("refresh_every", 500), tuning.get("refresh_at_start", False))
        lr_scales(
            {"a": 0.0, "b": 1.0},
            min_scale=tuning.get("min_scale", 0.0),
            separate_norm_range=tuning.get("separate_norm_range", False),
            direction=tuning.get("direction", "general"),
        )
        resolve_optimizer_class(cfg.optimizer._component_)
    except ValueError as e:
        raise ConfigError(f"unit_tuning / optimizer: {e}") from None
    if cfg.method != "full":
        expansion = cfg.expansion
        if not expansion.get("layers"):
            k = expansion.get("num_layers")
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ConfigError(
                    f"expansion.num_layers={k!r} must be a positive integer (k, layers to expand)"
                )
        if cfg.method in _PROBES and not expansion.get("layers") and not expansion.get("profile"):
            method = expansion.get("importance", "mask-out")
            if method not in IMPORTANCE_METHODS:
                raise ConfigError(
                    f"expansion.importance={method!r}; use one of {', '.join(IMPORTANCE_METHODS)}"
                )
        if (cfg.method in _PROBES or cfg.method in _DECOUPLED) and "probe" not in cfg:
            raise ConfigError(
                f"method={cfg.method} needs a `probe` section (general-domain probe data)"
            )


def recipe_main(argv: list[str]) -> None:
    """Parse the command line and run the recipe top to bottom.

    Args:
        argv (list[str]): ``--config NAME_OR_PATH [key=value ...]``.
    """
    cfg = resolved_config(argv, "adept_cpt")
    recipe = AdeptCPTRecipe(cfg)
    try:
        recipe.setup()
        recipe.stage1()
        if not cfg.get("stage1_only", False):
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
