"""How a copy must start under sandwich norms: every copy init on Gemma 3 270M, first steps.

The spec's copy init (o_proj and down_proj zero) is exact at step 0 on Gemma 3, but each branch
ends in a norm that rescales whatever the branch emits to full size: once the first update makes
the projections non-zero, the copy becomes a full-strength branch. Zeroing the post-norm gains
instead (``(1 + w) = 0``, projections kept) is exact too, and the branch grows with its gains;
AdamW moves a gain by about one learning rate per step, so the gains get a learning-rate
multiplier (``expansion.gate_lr_multiplier``). This script measures each init through the
recipe itself (``tune run adept_cpt --config gemma3_270m_medical``): four copies (LLaMA-Pro's
uniform [3, 8, 12, 17], one learning rate, so only the init differs), the config's lr 3e-4 and
schedule (10 warmup steps), 16 steps, the canary (held-out general Wikipedia leads and medical
documents, 8 ``<bos>``-led samples of up to 256 tokens each) every 4 steps. Runs are resumable:
a run whose directory holds ``done`` is read, not rerun.

Run (after ``benchmarks/prepare_gemma3.py`` and ``benchmarks/prepare_real_text.py``)::

    python benchmarks/copy_init_gemma3.py --model-dir ~/models/gemma-3-270m \\
        --data-dir ~/data/adept_real_text --work-dir /tmp/copy_init
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import metric_values, provenance, read_metric_log, results_dir

# name -> overrides; every run: method=llama_pro (copies of [3, 8, 12, 17], one lr).
RUNS: dict[str, list[str]] = {
    "zero_out_proj": ["expansion.copy_init=zero_out_proj"],
    "zero_post_norm x1": ["expansion.gate_lr_multiplier=1"],
    "zero_post_norm x10": ["expansion.gate_lr_multiplier=10"],
    "zero_post_norm x100": ["expansion.gate_lr_multiplier=100"],
    "zero_post_norm x1000": ["expansion.gate_lr_multiplier=1000"],
}
COMMON = [
    "method=llama_pro",
    "max_steps=100",  # the config's schedule; the runs stop after 16 steps
    "stop_after_steps=16",
    "canary.every_n_steps=4",
    "canary.general.num_samples=8",
    "canary.domain.num_samples=8",
    "save_every_n_steps=0",
    "seed=0",
]


def directory_name(name: str) -> str:
    return name.replace(" ", "_")


def run(name: str, overrides: list[str], args: argparse.Namespace) -> Path:
    """One recipe run in ``work_dir/NAME`` (skipped when it finished before)."""
    out = args.work_dir / directory_name(name)
    if (out / "done").is_file():
        return out
    cmd = [
        sys.executable, "-m", "torchtune._cli.tune", "run", "adept_cpt",
        "--config", "gemma3_270m_medical",
        f"checkpointer.checkpoint_dir={args.model_dir}", f"data_dir={args.data_dir}",
        f"output_dir={out}", f"dataset.cache_dir={args.work_dir / 'token_cache'}",
        *COMMON, *overrides,
    ]  # fmt: skip
    print(f"=== {name}: {' '.join(cmd[3:])}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    (out / "done").write_text("")
    return out


def canary_deltas(out: Path) -> dict[str, dict[int, float]]:
    """Step -> held-out loss change against the base model, per canary set."""
    rows = read_metric_log(out / "logs")
    deltas: dict[str, dict[int, float]] = {"general": {}, "domain": {}}
    for step, fields in rows:
        for name in deltas:
            if f"canary/{name}_loss" in fields:
                deltas[name][step] = fields[f"canary/{name}_loss"] - fields[f"canary/{name}_base"]
    base = {name: metric_values(rows, f"canary/{name}_base")[0] for name in deltas}
    return {**deltas, "base": base}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("~/models/gemma-3-270m"))
    parser.add_argument("--data-dir", type=Path, default=Path("~/data/adept_real_text"))
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/.cache/copy_init"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="run names (default: all)")
    args = parser.parse_args(argv)
    args.model_dir, args.data_dir = args.model_dir.expanduser(), args.data_dir.expanduser()
    args.work_dir = args.work_dir.expanduser().resolve()
    results = {"provenance": provenance(sys.argv), "common": COMMON, "runs": {}}
    for name, overrides in RUNS.items():
        if args.only is not None and name not in args.only:
            continue
        results["runs"][name] = {
            "overrides": overrides,
            **canary_deltas(run(name, overrides, args)),
        }
    path = results_dir() / "copy_init_gemma3.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    steps = sorted({s for r in results["runs"].values() for s in r["general"]})
    print("| init | " + " | ".join(f"step {s}: general / domain" for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for name, record in results["runs"].items():
        cells = [f"{record['general'][s]:+.3f} / {record['domain'][s]:+.3f}" for s in steps]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
