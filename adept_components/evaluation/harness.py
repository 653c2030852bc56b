"""Benchmark an adapted checkpoint with lm-evaluation-harness (spec "Paper's setups and results").

The saved model is a plain Hugging Face directory, so lm-eval's own ``hf`` backend reads it with
no edits: ``lm_eval --model hf --model_args pretrained=DIR --tasks mmlu``. This module is a thin
layer over that call for two things lm-eval does not do: it checks every task name before any
model is loaded (lm-eval knows thousands; a typo such as ``medqa`` for ``medqa_4options`` should
fail in seconds with the close matches, not with a traceback) and it checks that the directory
is a complete model (config, weights, tokenizer).

Run it as ``python -m adept_components.evaluation.harness DIR --tasks mmlu,gsm8k``. lm-eval is an
optional dependency: ``pip install 'adept-cpt[eval]'``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adept_components.evaluation.tokenizer_match import tokenizer_file_digests

_INSTALL_HINT = "lm-eval is not installed: pip install 'adept-cpt[eval]'"


def task_manager(include_path: str | Path | None = None) -> Any:
    """lm-eval's ``TaskManager`` over its own tasks plus the YAML tasks under ``include_path``.

    Args:
        include_path (str | Path | None): a directory of local task YAML files.

    Returns:
        lm_eval.tasks.TaskManager: the task index.

    Raises:
        ImportError: lm-eval is not installed (the message says how to install it).
        FileNotFoundError: ``include_path`` is not a directory.
    """
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError(_INSTALL_HINT) from None
    if include_path is not None and not Path(include_path).expanduser().is_dir():
        raise FileNotFoundError(f"include_path {str(include_path)!r} is not a directory")
    return TaskManager(include_path=str(Path(include_path).expanduser()) if include_path else None)


def check_tasks(tasks: Sequence[str], manager: Any) -> list[str]:
    """Return ``tasks`` if lm-eval knows every name (task, group or tag); else raise.

    Args:
        tasks (Sequence[str]): task names.
        manager (TaskManager): from ``task_manager``.

    Returns:
        list[str]: the names.

    Raises:
        ValueError: no task given, or unknown names, each with its closest known names.
    """
    if not tasks:
        raise ValueError("no lm-eval task given (e.g. --tasks mmlu,gsm8k)")
    known = set(manager.all_tasks)
    unknown = [name for name in tasks if name not in known]
    if not unknown:
        return list(tasks)
    hints = []
    for name in unknown:
        close = [t for t in manager.all_tasks if t.startswith(name)][:3]
        close += difflib.get_close_matches(name, manager.all_tasks, n=4, cutoff=0.6)
        close = list(dict.fromkeys(close))[:4]
        hints.append(f"{name!r} (did you mean {', '.join(close)}?)" if close else repr(name))
    raise ValueError(
        f"unknown lm-eval task(s): {'; '.join(hints)}. List them all with `lm_eval ls tasks`"
    )


def check_model_dir(model_dir: str | Path) -> Path:
    """Check that ``model_dir`` is a complete Hugging Face model directory.

    Args:
        model_dir (str | Path): the directory, e.g. ``output_dir/final``.

    Returns:
        Path: the directory.

    Raises:
        FileNotFoundError: no such directory, or no config.json, weights or tokenizer file.
    """
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise FileNotFoundError(f"{path} has no weights (*.safetensors or pytorch_model*.bin)")
    if not tokenizer_file_digests(path):
        raise FileNotFoundError(
            f"{path} has no tokenizer files; copy the base model's tokenizer files into it"
        )
    return path


def evaluate_hf(
    model_dir: str | Path,
    tasks: Sequence[str],
    include_path: str | Path | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: str = "auto",
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    log_samples: bool = False,
    manager: Any = None,
) -> dict[str, Any]:
    """Run lm-eval's ``hf`` backend on a model directory, after checking tasks and files.

    Equivalent to ``lm_eval --model hf --model_args pretrained=DIR,dtype=DTYPE --tasks …``.

    Args:
        model_dir (str | Path): Hugging Face model directory.
        tasks (Sequence[str]): lm-eval task, group or tag names.
        include_path (str | Path | None): directory of local task YAML files.
        batch_size (int): lm-eval batch size.
        device (str): ``cpu``, ``cuda`` or ``cuda:N``.
        dtype (str): model dtype for transformers (``auto`` reads config.json).
        num_fewshot (int | None): few-shot examples; None keeps each task's default.
        limit (int | float | None): examples per task (or a fraction); None = all.
        log_samples (bool): keep per-example results under ``"samples"``.
        manager (TaskManager | None): a ``task_manager(include_path)`` to reuse (indexing
            lm-eval's tasks takes seconds); default: a new one.

    Returns:
        dict: lm-eval's result dict (``"results"`` maps task -> ``{"acc,none": …}``).

    Raises:
        ImportError: lm-eval is not installed.
        FileNotFoundError: an incomplete model directory or a missing ``include_path``.
        ValueError: an unknown task name.
    """
    path = check_model_dir(model_dir)
    manager = manager if manager is not None else task_manager(include_path)
    names = check_tasks(tasks, manager)
    from lm_eval import simple_evaluate

    return simple_evaluate(
        model="hf",
        model_args={"pretrained": str(path), "dtype": dtype},
        tasks=names,
        task_manager=manager,
        batch_size=batch_size,
        device=device,
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=log_samples,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m adept_components.evaluation.harness DIR --tasks a,b [options]``.

    Prints lm-eval's results table; ``--output`` also writes the results as JSON. A bad task
    name, directory or missing lm-eval prints one line and exits with status 1.

    Returns:
        int: exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m adept_components.evaluation.harness",
        description="Evaluate a Hugging Face model directory with lm-evaluation-harness.",
    )
    parser.add_argument("model_dir", help="Hugging Face model directory (e.g. OUTPUT_DIR/final)")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    parser.add_argument("--include_path", default=None, help="directory of local task YAMLs")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num_fewshot", type=int, default=None)
    parser.add_argument("--limit", type=float, default=None, help="examples per task")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    try:
        results = evaluate_hf(
            args.model_dir,
            [t.strip() for t in args.tasks.split(",") if t.strip()],
            include_path=args.include_path,
            batch_size=args.batch_size,
            device=args.device,
            dtype=args.dtype,
            num_fewshot=args.num_fewshot,
            limit=limit,
        )
    except (ImportError, FileNotFoundError, ValueError) as e:
        if os.environ.get("ADEPT_DEBUG"):
            raise
        print(f"adept_components.evaluation.harness: error: {e}", file=sys.stderr)
        return 1
    from lm_eval.utils import make_table

    print(make_table(results))
    if args.output:
        out = Path(args.output).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        keep = {k: results[k] for k in ("results", "versions", "n-shot", "config") if k in results}
        out.write_text(json.dumps(keep, indent=2, default=str) + "\n")
        print(f"results: {out}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
