"""``adept-cpt``: list and copy the shipped configs (as ``tune ls`` / ``tune cp`` do for
torchtune's), and export a resume checkpoint as a complete Hugging Face model.

torchtune's config registry is a static list inside torchtune, so our configs cannot join it.
"""

from __future__ import annotations

# isort: off
import adept_components.quiet  # noqa: F401  (before torchtune, which imports torchao)
# isort: on

import argparse
import shutil
import sys
from pathlib import Path

from adept_components.config import (
    ConfigError,
    available_configs,
    config_description,
    config_recipe,
    resolve_config,
    user_errors,
)


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
    args = parser.parse_args(argv)

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
