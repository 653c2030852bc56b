"""ADEPT continual pretraining: ``tune run adept_cpt --config NAME_OR_PATH [key=value ...]``.

Installed as the top-level module ``adept_cpt`` so that ``tune run adept_cpt`` (one process) and
``tune run --nproc_per_node N adept_cpt`` (torchrun) find it from any directory. The recipe
reads top to bottom:

    setup (config, seed, device, dtype, distributed) -> load the base model
    -> smoke forward pass on the tokenizer's encoding of ``smoke_text``
    -> save an HF checkpoint written from the model.

Stage 1 (probe -> select -> expand) and stage 2 (unit-wise decoupled training) slot in between
load and save.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torchtune import config as tt_config
from torchtune import training, utils

from adept_components.checkpointing import HFCheckpointer
from adept_components.config import ConfigError, load_config
from adept_components.models import architecture_of

log = utils.get_logger("INFO")

REQUIRED_KEYS = (
    "output_dir",
    "seed",
    "device",
    "dtype",
    "model",
    "tokenizer",
    "checkpointer",
    "metric_logger",
)


class AdeptCPTRecipe:
    """One ADEPT run, configured by a torchtune-style YAML.

    Args:
        cfg (DictConfig): the full run config (see ``recipe_configs/``).

    Raises:
        ConfigError: a missing or invalid field, before anything is written.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        _validate(cfg)
        self.output_dir = Path(cfg.output_dir).expanduser()
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.device = utils.get_device(cfg.device)
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
        self.world_size, self.rank = utils.get_world_size_and_rank()
        self.is_rank_zero = self.rank == 0
        self.dtype = training.get_dtype(cfg.dtype, device=self.device)
        self.seed = training.set_seed(cfg.seed)
        self.metric_logger = None  # built in setup(), after everything that can reject the config

    def setup(self) -> None:
        """Build checkpointer -> model (with base weights) -> tokenizer, then the logger.

        Everything that can reject the config runs before the first file is written.
        """
        self.checkpointer: HFCheckpointer = tt_config.instantiate(self.cfg.checkpointer)
        with training.set_default_dtype(self.dtype), self.device:
            self.model = tt_config.instantiate(self.cfg.model)
        self.checkpointer.load_into(self.model)
        self.tokenizer = tt_config.instantiate(self.cfg.tokenizer)
        self.metric_logger = (
            tt_config.instantiate(self.cfg.metric_logger) if self.is_rank_zero else None
        )
        if self.metric_logger is not None:
            self.metric_logger.log_config(self.cfg)
        n_params = sum(p.numel() for p in self.model.parameters())
        self._log(
            f"Loaded {self.checkpointer.architecture.family} model: {len(self.model.layers)} layers, "
            f"{n_params:,} parameters, {self.dtype} on {self.device} (world size {self.world_size})"
        )

    def smoke_forward(self) -> float:
        """Next-token loss of the loaded model on ``smoke_text``, averaged over ranks.

        Returns:
            float: mean cross-entropy per token.
        """
        ids = self.tokenizer.encode(
            self.cfg.get("smoke_text", "Hello world."), add_bos=True, add_eos=True
        )
        tokens = torch.tensor(ids, device=self.device).unsqueeze(0)  # [1, s]
        self.model.eval()
        with torch.no_grad():
            logits = self.model(tokens[:, :-1])  # [1, s-1, vocab]
            loss = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), tokens[:, 1:].flatten()
            )
        if self.distributed:
            dist.all_reduce(loss)  # SUM: gloo has no AVG
            loss /= self.world_size
        if self.metric_logger is not None:
            self.metric_logger.log("smoke_loss", loss.item(), step=0)
        self._log(f"Smoke forward: {len(ids)} tokens, loss {loss.item():.4f}")
        return loss.item()

    def save_checkpoint(self, name: str = "final") -> Path:
        """Write an HF checkpoint of the current model (rank 0), atomically.

        Args:
            name (str): subdirectory of ``output_dir``.

        Returns:
            Path: the checkpoint directory.
        """
        path = self.output_dir / name
        if self.is_rank_zero:
            state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            start = time.perf_counter()
            self.checkpointer.save(state, architecture_of(self.model), name)
            self._log(f"Saved HF checkpoint to {path} in {time.perf_counter() - start:.1f}s")
        if self.distributed:
            dist.barrier()
        return path

    def cleanup(self) -> None:
        """Close the logger and the process group."""
        if self.metric_logger is not None:
            self.metric_logger.close()
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def _log(self, message: str) -> None:
        if self.is_rank_zero:
            log.info(message)


def _validate(cfg: DictConfig) -> None:
    """Check the whole config once, before any work; name the field and the fix."""
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"config lacks required key(s) {missing}")
    for key in ("model", "tokenizer", "checkpointer", "metric_logger"):
        if not isinstance(cfg[key], DictConfig) or "_component_" not in cfg[key]:
            raise ConfigError(f"`{key}` must be a mapping with a `_component_` entry")
    output_dir = Path(str(cfg.output_dir)).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir={str(output_dir)!r} is a file; give a directory path")
    if not isinstance(cfg.seed, int) and cfg.seed is not None:
        raise ConfigError(f"seed={cfg.seed!r} must be an integer or null")
    if cfg.dtype not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"dtype={cfg.dtype!r}; use one of fp32, bf16")
    if cfg.device not in ("cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ConfigError(f"device={cfg.device!r}; use cpu or cuda")
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} but no CUDA GPU is visible; use device=cpu")


def recipe_main(argv: list[str]) -> None:
    """Parse the command line and run the recipe top to bottom.

    Args:
        argv (list[str]): ``--config NAME_OR_PATH [key=value ...]``.
    """
    cfg = load_config(argv)
    OmegaConf.resolve(cfg)
    recipe = AdeptCPTRecipe(cfg)
    try:
        recipe.setup()
        recipe.smoke_forward()
        recipe.save_checkpoint()
    finally:
        recipe.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; a user error prints one line naming the fix and exits with 1.

    ``ADEPT_DEBUG=1`` re-raises such errors with their traceback.

    Returns:
        int: exit status.
    """
    try:
        recipe_main(sys.argv[1:] if argv is None else argv)
    except (ConfigError, ValueError, FileNotFoundError, OSError) as e:
        if os.environ.get("ADEPT_DEBUG"):
            raise
        print(f"adept_cpt: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
