"""``adept-cpt``: list and copy the shipped configs (as ``tune ls`` / ``tune cp`` do for
torchtune's), size a run before it starts (``plan``), and export a resume checkpoint as a
complete Hugging Face model.

torchtune's config registry is a static list inside torchtune, so our configs cannot join it.
"""

from __future__ import annotations

# isort: off
import adept_components.quiet  # noqa: F401  (before torchtune, which imports torchao)
# isort: on

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from adept_components.config import (
    ConfigError,
    RunPlan,
    available_configs,
    config_description,
    config_recipe,
    resolve_config,
    resolved_config,
    user_errors,
)

if TYPE_CHECKING:
    from adept_components.planning import Planner


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adept-cpt`` command.

    Args:
        argv (list[str] | None): arguments; default ``sys.argv[1:]``.

    Returns:
        int: exit status.
    """
    parser = argparse.ArgumentParser(prog="adept-cpt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ls", help="list the shipped configs of the adept_cpt recipe")
    cp = sub.add_parser("cp", help="copy a shipped config to edit it")
    cp.add_argument("name", help="config name (see `adept-cpt ls`)")
    cp.add_argument("destination", help="file or directory to copy to")
    cp.add_argument("--force", action="store_true", help="overwrite an existing file")
    export = sub.add_parser(
        "export",
        help="write a complete HF model of a step_N resume checkpoint (base + trained tensors)",
    )
    export.add_argument("checkpoint", help="OUTPUT_DIR/checkpoints/step_N of a run")
    export.add_argument("destination", help="HF model directory to write (must not exist)")
    export.add_argument(
        "--base", help="the base checkpoint, if it moved since the run (default: as recorded)"
    )
    plan = sub.add_parser(
        "plan",
        help="size a run: parameters, memory per GPU, FLOPs and time of every method",
        description="Size a run before any GPU hours: build the model on the meta device, "
        "expand and freeze it as each method would, and estimate memory per GPU, FLOPs and "
        "time. Needs no weights and no GPU.",
    )
    plan.add_argument("config", help="config name (see `adept-cpt ls`) or YAML path")
    plan.add_argument("overrides", nargs="*", help="key=value overrides, as for tune run")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs to train on (default: 1)")
    plan.add_argument(
        "--gpu-memory", type=float, default=80.0, metavar="GiB", help="per GPU (default: 80)"
    )
    plan.add_argument(
        "--tflops",
        type=float,
        metavar="T",
        help="achieved TFLOP/s per GPU, for step and run times (an H100 in bf16 at 40%% MFU: 400)",
    )
    args, extra = parser.parse_known_args(argv)
    if args.command == "plan" and not any(item.startswith("-") for item in extra):
        return _plan(
            args.config, [*args.overrides, *extra], args.gpus, args.gpu_memory, args.tflops
        )
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    if args.command == "export":
        return _export(Path(args.checkpoint), Path(args.destination), args.base)

    if args.command == "ls":
        names = available_configs()
        width = max(len(n) for n in names)
        print(f"{'RECIPE':<10} {'CONFIG':<{width}}  DESCRIPTION")
        for name in names:
            print(f"{config_recipe(name):<10} {name:<{width}}  {config_description(name)}")
        return 0

    try:
        source = resolve_config(args.name)
    except ConfigError as e:
        print(f"adept-cpt cp: error: {e}", file=sys.stderr)
        return 2
    destination = Path(args.destination)
    if destination.is_dir():
        destination = destination / source.name
    if destination.suffix not in (".yaml", ".yml"):
        destination = destination.with_suffix(".yaml")
    if destination.exists() and not args.force:
        print(
            f"adept-cpt cp: error: {destination} exists (use --force to overwrite)", file=sys.stderr
        )
        return 2
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    print(f"Copied {args.name} to {destination}")
    return 0


def _plan(
    config: str, overrides: list[str], gpus: int, gpu_memory: float, tflops: float | None
) -> int:
    """``adept-cpt plan``: the report, or one line naming the bad field and exit status 2."""
    try:
        text = plan_report(config, overrides, gpus, gpu_memory, tflops)
    except (ValueError, FileNotFoundError) as e:  # ConfigError among them
        if os.environ.get("ADEPT_DEBUG"):
            raise
        print(f"adept-cpt plan: error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


def plan_report(
    config: str,
    overrides: list[str],
    gpus: int = 1,
    gpu_memory: float = 80.0,
    tflops: float | None = None,
) -> str:
    """The text of ``adept-cpt plan CONFIG [key=value ...]``.

    Args:
        config (str): a shipped config name or a YAML path.
        overrides (list[str]): ``key=value`` items.
        gpus (int): GPUs to train on.
        gpu_memory (float): GiB per GPU.
        tflops (float | None): achieved TFLOP/s per GPU.

    Returns:
        str: the report.

    Raises:
        ConfigError: a bad config, override or option, naming the field.
    """
    from adept_components.planning import render_plan

    if gpus < 1:
        raise ConfigError(f"--gpus {gpus}: must be at least 1 (the GPUs to train on)")
    for flag, value in (("--gpu-memory", gpu_memory), ("--tflops", tflops)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag} {value:g}: must be a positive number")
    planner, source = load_planner(config, overrides)
    return render_plan(planner, config, source, gpus, gpu_memory, tflops)


def load_planner(config: str, overrides: list[str]) -> tuple[Planner, str]:
    """Read the config as ``tune run adept_cpt`` would, once per method, and size each.

    The config's ``device`` is where the run will train: a ``cuda`` config is planned as it
    will run, on a machine without a GPU too (only the check that one is visible is skipped).

    Args:
        config (str): a shipped config name or a YAML path.
        overrides (list[str]): ``key=value`` items.

    Returns:
        tuple[Planner, str]: the planner, and where the architecture came from.

    Raises:
        ConfigError: a bad config or override, naming the field.
    """
    import torch

    from adept_components.methods import METHODS
    from adept_components.planning import Planner, base_builder, recipe_loss

    argv = ["--config", config, *overrides]
    cfg = resolved_config(argv, "adept_cpt")
    device, method = str(cfg.get("device")), cfg.get("method")
    no_gpu_check = device.startswith("cuda") and not torch.cuda.is_available()
    if method not in METHODS:
        if no_gpu_check:
            cfg.device = "cpu"
        RunPlan.from_config(cfg)  # the method's own error, or another field's first
    plans: dict[str, RunPlan | ConfigError] = {}
    for name in METHODS:
        variant = resolved_config([*argv, f"method={name}"], "adept_cpt")
        if no_gpu_check:
            variant.device = "cpu"  # planned for the GPU it names; none is needed to plan
        try:
            plans[name] = RunPlan.from_config(variant)
        except ConfigError as e:
            if name == method:
                raise
            plans[name] = e
    build, source = base_builder(plans[method])
    return Planner(plans, method, device, build, recipe_loss(plans[method])), source


def _export(checkpoint: Path, destination: Path, base: str | None) -> int:
    """``adept-cpt export``: one line on success or on a user error."""
    from adept_components.checkpointing import export_hf, is_trainable_checkpoint

    if not is_trainable_checkpoint(checkpoint):
        hint = (
            " (it is already a complete HF model)" if (checkpoint / "config.json").is_file() else ""
        )
        print(
            f"adept-cpt export: error: {checkpoint} is not a trainable-only resume checkpoint "
            f"(no resume.json){hint}",
            file=sys.stderr,
        )
        return 2
    if destination.exists():
        print(
            f"adept-cpt export: error: {destination} exists; choose a new directory",
            file=sys.stderr,
        )
        return 2
    with user_errors("adept-cpt export"):
        written = export_hf(checkpoint, destination, Path(base).expanduser() if base else None)
        print(f"Exported {checkpoint} to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
