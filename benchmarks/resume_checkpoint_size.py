"""Benchmark: bytes written and save time per intermediate (resume) checkpoint, full vs trainable.

Two runs of the real recipe on SmolLM2-135M-Instruct with four layer copies (``llama_pro``:
the same copies train as in ADEPT, without a probe), identical except for
``intermediate_checkpoints``:

- ``full``: every ``step_N`` is a complete HF model plus the training state (the optimizer
  state of the trained tensors, and the fp32 copies when the model is bf16), gathered on rank 0;
- ``trainable``: the trained tensors and their optimizer state, every rank its own shard, over
  a reference to the base checkpoint.

Both save after every step; per run the script reports the bytes of one ``step_N`` directory
and the median ``save_seconds`` the recipe logged (gathering and writing), for an fp32 model and
for bf16 with fp32 copies (the GPU configuration). It then checks that a resume from the
trainable checkpoint ends on the same weights as the uninterrupted run, and projects the bytes
for Qwen3-8B with four copies from its parameter counts (built on the meta device)::

    python benchmarks/resume_checkpoint_size.py --model-dir ~/models/SmolLM2-135M-Instruct \\
        --data-dir ~/data/adept_real_text        # ~5 min on 2 CPU cores

Results: ``benchmarks/results/resume_checkpoint_size.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import common
import torch

CACHE = common.CACHE_DIR / "resume_checkpoint_size"
K = 4
ADAM_STATES = 2  # exp_avg and exp_avg_sq, fp32, per trained parameter


def run_dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def recipe_argv(args: argparse.Namespace, out: Path, overrides: list[str]) -> list[str]:
    """The runs' shared command line: SmolLM2, four uniform copies, batch 1 x 256 tokens."""
    return [
        "--config", "smollm2_135m_medical", f"output_dir={out}", f"data_dir={args.data_dir}",
        f"checkpointer.checkpoint_dir={args.model_dir}", "method=llama_pro",
        f"expansion.num_layers={K}", "batch_size=1", "model.max_seq_len=256",
        "tokenizer.max_seq_len=256", "dataset.max_seq_len=256", f"max_steps={args.steps}",
        "canary.every_n_steps=0", "lr_scheduler.num_warmup_steps=1",
        f"dataset.cache_dir={CACHE / 'token_cache'}", *overrides,
    ]  # fmt: skip


def one_run(args: argparse.Namespace, name: str, overrides: list[str]) -> dict[str, Any]:
    """Run the recipe, saving every step; bytes of ``step_2`` and the logged save times."""
    out = CACHE / name
    shutil.rmtree(out, ignore_errors=True)
    argv = recipe_argv(args, out, ["save_every_n_steps=1", *overrides])
    wall, messages = common.run_recipe(argv)
    rows = common.read_metric_log(out / "logs")
    saves = common.metric_values(rows, "save_seconds")
    step = out / "checkpoints" / "step_2"
    trained, total = common.trainable_counts(messages)
    return {
        "overrides": overrides,
        "step_bytes": run_dir_bytes(step),
        "files": sorted(p.name for p in step.iterdir()),
        "save_seconds": saves,
        "median_save_seconds": statistics.median(saves),
        "trained_params": trained,
        "total_params": total,
        "wall_s": wall,
        "out": str(out),
    }


def check_resume(args: argparse.Namespace, run: dict[str, Any]) -> bool:
    """Resume the trainable run from ``step_2``: the final weights equal the straight run's."""
    from safetensors.torch import load_file

    out = Path(run["out"])
    resumed = CACHE / "resumed"
    shutil.rmtree(resumed, ignore_errors=True)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(out / "checkpoints" / "step_2", resumed / "checkpoints" / "step_2")
    overrides = ["save_every_n_steps=0", *run["overrides"], "resume_from_checkpoint=true"]
    argv = recipe_argv(args, resumed, overrides)
    common.run_recipe(argv)
    a, b = (
        load_file(str(out / "final" / "model.safetensors")),
        load_file(str(resumed / "final" / "model.safetensors")),
    )
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def qwen3_8b_projection() -> dict[str, Any]:
    """Bytes of one intermediate checkpoint of Qwen3-8B with four copies, both formats."""
    from adept_components.expansion import ExpansionMetadata, expand_model
    from adept_components.models.qwen3 import qwen3_8b
    from adept_components.trainable import freeze_all_but

    with torch.device("meta"):
        base = qwen3_8b(max_seq_len=1024)
        metadata = ExpansionMetadata(len(base.layers), [8, 16, 24, 32])  # any four layers
        model = expand_model(lambda: qwen3_8b(max_seq_len=1024), metadata)
    summary = freeze_all_but(model, metadata.copy_positions)
    total, trained = summary.total_params, summary.trainable_params
    optimizer = trained * 4 * ADAM_STATES
    full = total * 2 + trained * 4 + optimizer  # bf16 HF model + fp32 copies + Adam moments
    trainable = trained * 4 + optimizer  # fp32 copies + Adam moments
    return {
        "total_params": total,
        "trained_params": trained,
        "full_bytes": full,
        "full_bytes_hf_model": total * 2,
        "trainable_bytes": trainable,
        "trainable_bytes_weights": trained * 4,
        "ratio": trainable / full,
    }


def report(record: dict[str, Any]) -> str:
    runs, gb = record["runs"], 1e9
    lines = [
        "# Resume checkpoints: full vs trainable-only",
        "",
        f"`{record['provenance']['command']}`",
        "",
        common.provenance_line(record["provenance"]),
        "",
        f"SmolLM2-135M-Instruct, {K} copies (llama_pro), {record['steps']} steps saving every step.",
        "",
        "| dtype | intermediate_checkpoints | step_N bytes | ratio | median save s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for dtype in ("fp32", "bf16"):
        full, part = runs[f"{dtype}_full"], runs[f"{dtype}_trainable"]
        for name, run in (("full", full), ("trainable", part)):
            lines.append(
                f"| {dtype} | {name} | {run['step_bytes'] / 1e6:,.1f} MB | "
                f"{run['step_bytes'] / full['step_bytes']:.3f} | {run['median_save_seconds']:.2f} | "
                f"{run['median_save_seconds'] / full['median_save_seconds']:.3f} |"
            )
    p = record["qwen3_8b"]
    lines += [
        "",
        f"Resume from the trainable checkpoint (fp32) ends on the straight run's weights: "
        f"{record['resume_exact']}.",
        "",
        f"Qwen3-8B, 4 copies, bf16 with fp32 copies and AdamW (projected from parameter counts: "
        f"{p['trained_params']:,} of {p['total_params']:,} trained): full {p['full_bytes'] / gb:.1f} GB "
        f"(HF model {p['full_bytes_hf_model'] / gb:.1f} GB), trainable {p['trainable_bytes'] / gb:.1f} GB "
        f"(weights {p['trainable_bytes_weights'] / gb:.1f} GB, Adam moments the rest): ratio {p['ratio']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.model_dir, args.data_dir = args.model_dir.expanduser(), args.data_dir.expanduser()
    provenance = common.start_timing(sys.argv, args.threads, seed=0)
    dtypes = {"fp32": ["dtype=fp32"], "bf16": ["dtype=bf16", "trainable_dtype=fp32"]}
    runs = {}
    for dtype, overrides in dtypes.items():
        for contents in ("full", "trainable"):
            runs[f"{dtype}_{contents}"] = one_run(
                args, f"{dtype}_{contents}", [*overrides, f"intermediate_checkpoints={contents}"]
            )
    record = {
        "provenance": provenance,
        "steps": args.steps,
        "runs": runs,
        "resume_exact": check_resume(args, runs["fp32_trainable"]),
        "qwen3_8b": qwen3_8b_projection(),
    }
    for run in runs.values():
        run["out"] = str(Path(run["out"]).relative_to(common.REPO))
    results = common.results_dir()
    (results / "resume_checkpoint_size.json").write_text(json.dumps(record, indent=2) + "\n")
    text = report(record)
    (results / "resume_checkpoint_size.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
