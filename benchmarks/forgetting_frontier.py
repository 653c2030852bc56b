"""All forgetting-benchmark runs on one trade-off plot: domain gain vs general forgetting.

``benchmarks/forgetting.py`` compares the methods at one learning rate per invocation. A
method can look better at one LR only because it moves further along the same trade-off (a
higher effective LR learns more domain and forgets more), so this helper gathers every
result file it is given (default: every ``benchmarks/results/forgetting*.json`` that
``forgetting.py`` wrote; the SmolLM2 record has its own report),
draws each method's points across the LRs tried, joined in LR order, and writes a table of
every run (all settings tried, none left out)::

    python benchmarks/forgetting_frontier.py
    python benchmarks/forgetting_frontier.py benchmarks/results/forgetting.json ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SMOLLM2_PREFIX = "forgetting_smollm2"  # forgetting_smollm2.py's record: another layout
_COLORS = {
    "full": "tab:red",
    "llama_pro": "tab:orange",
    "no_stage2": "tab:blue",
    "adept": "tab:green",
}


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """Every run of the given result files, labelled with its variant and source file."""
    runs = []
    for path in paths:
        record = json.loads(path.read_text())
        setting = record["setting"]
        for run in record["runs"]:
            variant = run["method"]
            if run["method"] == "adept" and setting.get("separate_norm_range"):
                variant += " (separate norm range)"
            if run["method"] == "adept" and setting.get("min_scale"):
                variant += f" (min_scale {setting['min_scale']:g})"
            runs.append({**run, "variant": variant, "file": path.name, "steps": setting["steps"]})
    return runs


def table(runs: list[dict[str, Any]]) -> str:
    """One row per run, sorted by variant and LR."""
    lines = [
        "| variant | lr | steps | general Δ | domain Δ | domain Δ / general Δ | file |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["variant"], r["lr"])):
        efficiency = (
            f"{r['domain_decrease'] / r['general_increase']:.2f}"
            if r["general_increase"] > 0
            else "n/a"
        )
        lines.append(
            f"| {r['variant']} | {r['lr']:g} | {r['steps']} | {r['general_increase']:+.4f} "
            f"| {r['domain_decrease']:+.4f} | {efficiency} | {r['file']} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> Path:
    """Domain loss decrease against general loss increase, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    variants = sorted({r["variant"] for r in runs})
    for variant in variants:
        points = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["lr"])
        method = points[0]["method"]
        xs = [r["general_increase"] for r in points]
        ys = [r["domain_decrease"] for r in points]
        style = "--" if variant != method else "-"
        marker = "s" if variant != method else "o"
        ax.plot(xs, ys, style, marker=marker, color=_COLORS.get(method, "gray"), label=variant)
        for r in points:
            ax.annotate(
                f"{r['lr']:g}", (r["general_increase"], r["domain_decrease"]),
                textcoords="offset points", xytext=(5, -10), fontsize=7,
            )  # fmt: skip
    ax.set(
        xlabel="general held-out loss increase (forgetting; lower is better)",
        ylabel="domain held-out loss decrease (higher is better)",
        title="Forgetting vs domain gain across learning rates (labels: lr)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="result JSON files (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "forgetting_frontier.png")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    files = args.files or sorted(
        p for p in RESULTS_DIR.glob("forgetting*.json") if not p.name.startswith(SMOLLM2_PREFIX)
    )
    if not files:
        raise SystemExit(f"no result files: run benchmarks/forgetting.py first ({RESULTS_DIR})")
    runs = load_runs(files)
    print(table(runs))
    print(f"\nplot: {plot(runs, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
