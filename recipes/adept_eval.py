"""Retention of an adapted model against its base: ``tune run adept_eval --config NAME_OR_PATH``.

Installed as the top-level module ``adept_eval`` (beside ``adept_cpt``) so ``tune run adept_eval``
finds it from any directory. It compares any two Hugging Face checkpoints that share a
tokenizer, typically a base model and the ``final`` directory ``adept_cpt`` wrote:

    setup      config, device, dtype; both checkpoints and their tokenizers (must match);
               the general and domain held-out sets, tokenized once with the base tokenizer
    evaluate   each model in turn: build from its config.json, load its weights, and take the
               token-mean cross-entropy over every supervised held-out token
    report     retention.json / .md / .png under output_dir (losses, perplexities, deltas)

Everything that can reject the config or its files runs before the first write: a bad run
prints one line naming the fix, exits with status 1 and leaves no output directory behind.
"""

from __future__ import annotations

# isort: off
import adept_components.quiet  # noqa: F401  (before torchtune, which imports torchao)
# isort: on

import sys
import time
from functools import partial
from pathlib import Path

from omegaconf import DictConfig
from torchtune import config as tt_config
from torchtune import training, utils
from torchtune.modules import TransformerDecoder

from adept_components.checkpointing import HFCheckpointer
from adept_components.checkpointing.materialize import materialize
from adept_components.config import (
    ConfigError,
    check_positive_int,
    check_run_fields,
    named_errors,
    resolved_config,
    user_errors,
)
from adept_components.data import ProbeData, probe_batches
from adept_components.data.leading_bos import check_bos_leads, required_bos
from adept_components.evaluation import (
    check_same_tokenizer,
    retention_report,
    write_retention_report,
)
from adept_components.losses import heldout_loss
from adept_components.models import model_from_hf_config

log = utils.get_logger("INFO")

ROLES = ("base", "adapted")
HELD_OUT = ("general", "domain")
REQUIRED_KEYS = (
    "output_dir",
    "device",
    "dtype",
    "base_checkpoint_dir",
    "adapted_checkpoint_dir",
    "tokenizer",
    "general",
    "domain",
    "batch_size",
)


class AdeptEvalRecipe:
    """Held-out general and domain loss of a base and an adapted model, as a retention report.

    Args:
        cfg (DictConfig): the run config (see ``recipe_configs/adept_eval_demo.yaml``).

    Raises:
        ConfigError: a missing or invalid field, before anything is read or written.
    """

    def __init__(self, cfg: DictConfig) -> None:
        _validate(cfg)
        self.cfg = cfg
        self.output_dir = Path(str(cfg.output_dir)).expanduser()
        self.device = utils.get_device(cfg.device)
        self.dtype = training.get_dtype(cfg.dtype, device=self.device)
        self.batch_size: int = cfg.batch_size
        self.checkpoint_dirs = {role: Path(str(cfg[f"{role}_checkpoint_dir"])) for role in ROLES}
        self.losses: dict[str, dict[str, float]] = {}

    def setup(self) -> None:
        """Checkpoints -> tokenizer check -> tokenizer -> held-out sets; nothing is written."""
        self.checkpointers = {
            role: named_errors(
                f"{role}_checkpoint_dir", HFCheckpointer, str(path), str(self.output_dir)
            )
            for role, path in self.checkpoint_dirs.items()
        }
        named_errors(
            "adapted_checkpoint_dir",
            check_same_tokenizer,
            self.checkpoint_dirs["base"],
            self.checkpoint_dirs["adapted"],
        )
        self.tokenizer = named_errors("tokenizer", tt_config.instantiate, self.cfg.tokenizer)
        self.held_out: dict[str, ProbeData] = {}
        for name in HELD_OUT:
            data = named_errors(
                name, tt_config.instantiate, self.cfg[name], tokenizer=self.tokenizer
            )
            self._check_seq_len(data.info.max_seq_len, f"{name}.max_seq_len")
            self.held_out[name] = data
        self.batches = {
            name: probe_batches(data, self.batch_size) for name, data in self.held_out.items()
        }
        base = self.checkpointers["base"]
        bos = named_errors(
            "tokenizer",
            required_bos,
            base.architecture.family_record,
            self.tokenizer,
            base.hf_config,
        )
        for name, batches in self.batches.items():
            named_errors(name, check_bos_leads, name, [t for t, _ in batches], bos)
        # The RoPE cache only needs the longest held-out sequence, not the model's 40k context.
        self.max_seq_len = max(t.shape[1] for b in self.batches.values() for t, _ in b)
        for name, data in self.held_out.items():
            log.info(
                f"{name} held-out set: {data.info.num_samples} samples, {data.info.num_tokens:,} "
                f"supervised tokens from {data.info.source}"
            )

    def evaluate(self) -> None:
        """Load each model in turn and take its loss on both held-out sets."""
        for role in ROLES:
            start = time.perf_counter()
            model = named_errors(f"{role}_checkpoint_dir", self._load_model, role)
            self.losses[role] = {
                name: heldout_loss(
                    model, batches, progress_desc=f"{role} {name} (batch)", show_progress=True
                )
                for name, batches in self.batches.items()
            }
            del model
            log.info(
                f"{role} ({self.checkpoint_dirs[role]}): general loss "
                f"{self.losses[role]['general']:.4f}, domain loss "
                f"{self.losses[role]['domain']:.4f} ({time.perf_counter() - start:.1f}s)"
            )

    def report(self) -> dict[str, Path]:
        """Write the retention report under ``output_dir``.

        Returns:
            dict[str, Path]: the written files.
        """
        report = retention_report(
            general_base=self.losses["base"]["general"],
            general_adapted=self.losses["adapted"]["general"],
            domain_base=self.losses["base"]["domain"],
            domain_adapted=self.losses["adapted"]["domain"],
            num_tokens={name: data.info.num_tokens for name, data in self.held_out.items()},
            metadata={
                "source": "adept_eval",
                "base_checkpoint_dir": str(self.checkpoint_dirs["base"].expanduser().resolve()),
                "adapted_checkpoint_dir": str(
                    self.checkpoint_dirs["adapted"].expanduser().resolve()
                ),
                **{f"{name}_source": data.info.source for name, data in self.held_out.items()},
                **{
                    f"{name}_samples": data.info.num_samples for name, data in self.held_out.items()
                },
                "dtype": str(self.cfg.dtype),
            },
        )
        files = write_retention_report(self.output_dir, report)
        log.info(
            "Retention report:\n"
            + report.to_markdown().split("\n\n")[1]
            + "\n  "
            + "\n  ".join(f"{key}: {path}" for key, path in files.items())
        )
        return files

    def _load_model(self, role: str) -> TransformerDecoder:
        """Build the decoder ``config.json`` describes and load the checkpoint into it."""
        checkpointer = self.checkpointers[role]
        model = materialize(
            partial(model_from_hf_config, str(checkpointer.checkpoint_dir), self.max_seq_len),
            checkpointer.load_state_dict(),
            checkpointer.architecture.family,
            self.device,
            self.dtype,
        )
        return model.eval()

    def _check_seq_len(self, seq_len: int, field: str) -> None:
        for role, checkpointer in self.checkpointers.items():
            limit = checkpointer.architecture.max_seq_len
            if seq_len > limit:
                raise ConfigError(
                    f"{field}={seq_len} exceeds the {role} model's max_position_embeddings="
                    f"{limit}; lower {field}"
                )


def _validate(cfg: DictConfig) -> None:
    """Check the whole config once, before any work; name the field and the fix."""
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"config lacks required key(s) {missing}")
    for key in ("tokenizer", *HELD_OUT):
        if not isinstance(cfg[key], DictConfig) or "_component_" not in cfg[key]:
            raise ConfigError(f"`{key}` must be a mapping with a `_component_` entry")
    for key in HELD_OUT:
        if "source" not in cfg[key]:
            raise ConfigError(f"`{key}.source` is missing: the held-out file or dataset to read")
    check_run_fields(cfg)
    check_positive_int(cfg, "batch_size")
    for role in ROLES:
        path = Path(str(cfg[f"{role}_checkpoint_dir"])).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"{role}_checkpoint_dir={str(path)!r} does not exist: give a Hugging Face model "
                "directory (adept_cpt writes OUTPUT_DIR/final)"
            )


def recipe_main(argv: list[str]) -> None:
    """Parse the command line and run the evaluation top to bottom.

    Args:
        argv (list[str]): ``--config NAME_OR_PATH [key=value ...]``.
    """
    cfg = resolved_config(argv, "adept_eval")
    recipe = AdeptEvalRecipe(cfg)
    recipe.setup()
    recipe.evaluate()
    recipe.report()


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; a user error prints one line naming the fix and exits with 1.

    ``ADEPT_DEBUG=1`` re-raises such errors with their traceback.

    Returns:
        int: exit status.
    """
    with user_errors("adept_eval"):
        recipe_main(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
