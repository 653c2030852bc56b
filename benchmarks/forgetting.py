"""Benchmark: forgetting vs domain gain of ADEPT, full CPT and LLaMA-Pro on real text (CPU).

The question of the paper at toy scale: continual pretraining on a new domain teaches the
domain and erodes general competence; how much of each do ``full`` (every weight trains),
``llama_pro`` (k copies spread uniformly), ``no_stage2`` (k copies of the least critical
layers, uniform LR) and ``adept`` (the same copies, importance-scaled per-unit LRs) give at
an equal token budget and seed?

1. A general-domain base model: a 12-layer Qwen3 (dim 256, ~10 M parameters) that this
   script pretrains on ``general.txt`` (five Jane Austen novels, ~1 M tokens) with the shipped
   demo tokenizer, once, and caches as an HF directory under ``benchmarks/.cache/``
   (gitignored; delete it to rebuild).
2. Each method runs through the real recipe (``adept_cpt.main`` with the ``tiny_demo`` config
   and overrides) on the domain corpus ``domain.txt`` (Metamath set.mm descriptions, maths),
   with the forgetting canary on *all* of ``general_heldout.txt`` (*Persuasion*, a novel the
   base model never saw) and ``domain_heldout.txt`` (interleaved held-out maths).
3. Reported per run: general held-out loss increase (final - base), domain held-out loss
   decrease (base - final), trained parameters, wall time and the part of it spent in canary
   passes (the recipe's ``canary/seconds`` in its metric log); a markdown table, a JSON record
   (with the command, commit and machine under ``provenance``) and a PNG under
   ``benchmarks/results/``. A ``--quick`` smoke run writes them to the ignored
   ``benchmarks/.cache/quick_results/`` instead: it checks the machinery, it measures nothing.

Run from the repository root (CPU, fp32; nothing is downloaded)::

    python benchmarks/forgetting.py            # ~40 min cold (12 min of it pretraining), 2 cores
    python benchmarks/forgetting.py --quick    # < 3 min smoke run with toy budgets
    python benchmarks/forgetting.py --steps 300 --lr 5e-4 --tag _lr5e-4

Every method that has a knob gets the same value (``--lr``, ``--k``, ``--refresh-every``,
``--min-scale``); ``full`` additionally runs at ``--full-lr`` (conventional CPT practice: all
weights at a lower LR than new blocks) so that it is not judged only at the new-block LR.
Wall times come from a machine shared with other jobs: compare them within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import common
import torch

from adept_components.data.sources import read_rows
from adept_components.models.architecture import ModelArchitecture
from adept_components.models.tokenizers import qwen3_tokenizer

common.use_tools()
from build_demo import DEMO_ARCHITECTURE, DEMO_DIR, pretrain  # noqa: E402

CACHE_DIR = common.CACHE_DIR / "forgetting"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json")
METHODS = ("full", "llama_pro", "no_stage2", "adept")
GENERAL_HELDOUT = DEMO_DIR / "general_heldout.txt"
DOMAIN_HELDOUT = DEMO_DIR / "domain_heldout.txt"


@dataclasses.dataclass(frozen=True)
class Setting:
    """Everything a benchmark run depends on: base model, pretraining and CPT budgets."""

    architecture: ModelArchitecture
    pretrain_steps: int
    pretrain_lr: float
    pretrain_batch_size: int
    seq_len: int  # pretraining windows, CPT chunks and canary truncation alike
    steps: int  # CPT optimizer steps, every method
    batch_size: int
    lr: float  # every method
    full_lr: float | None  # an extra ``full`` run at its own LR; None skips it
    k: int
    refresh_every: int
    min_scale: float
    separate_norm_range: bool
    canary_every: int
    canary_samples: int | None  # None: every paragraph of the held-out files
    seed: int


FULL_SETTING = Setting(
    architecture=dataclasses.replace(
        DEMO_ARCHITECTURE,
        num_layers=12,
        num_heads=8,
        num_kv_heads=4,
        embed_dim=256,
        intermediate_dim=768,
        head_dim=32,
    ),
    pretrain_steps=600,
    pretrain_lr=2e-3,
    pretrain_batch_size=8,
    seq_len=256,
    steps=200,
    batch_size=8,
    lr=1e-3,
    full_lr=2e-4,
    k=3,
    refresh_every=25,
    min_scale=0.0,
    separate_norm_range=False,
    canary_every=25,
    canary_samples=None,
    seed=0,
)
QUICK_SETTING = dataclasses.replace(
    FULL_SETTING,
    architecture=dataclasses.replace(
        DEMO_ARCHITECTURE,
        num_layers=4,
        num_heads=2,
        num_kv_heads=1,
        embed_dim=64,
        intermediate_dim=192,
    ),
    pretrain_steps=200,
    seq_len=128,
    steps=24,
    k=1,
    refresh_every=8,
    canary_every=8,
    canary_samples=32,
)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One recipe run: a display name, the recipe ``method`` and its learning rate."""

    name: str
    method: str
    lr: float


@dataclasses.dataclass
class RunResult:
    """What one run measured."""

    name: str
    method: str
    lr: float
    tokens: int
    trainable: int
    total: int
    layers: str  # copied (or, for full, "all") layers
    general_base: float
    general_final: float
    domain_base: float
    domain_final: float
    wall_s: float
    canary_s: float | None  # None: the recipe logged no canary/seconds
    curve: list[dict[str, float]]

    @property
    def general_increase(self) -> float:
        return self.general_final - self.general_base

    @property
    def domain_decrease(self) -> float:
        return self.domain_base - self.domain_final


# ------------------------------------------------------------------------------ base model


def base_model_dir(setting: Setting) -> Path:
    """Cache directory of the pretrained base model: one per architecture and budget."""
    a = setting.architecture
    name = (
        f"base_L{a.num_layers}_d{a.embed_dim}_steps{setting.pretrain_steps}"
        f"_b{setting.pretrain_batch_size}x{setting.seq_len}_lr{setting.pretrain_lr:g}_seed{setting.seed}"
    )
    return CACHE_DIR / name


def general_stream(tokenizer: Any) -> torch.Tensor:
    """``general.txt`` as one token stream, paragraph by paragraph, each closed by EOS."""
    stream: list[int] = []
    for paragraph in (DEMO_DIR / "general.txt").read_text().split("\n\n"):
        stream += tokenizer.encode(paragraph, add_bos=False, add_eos=True)
    return torch.tensor(stream)


def build_base_model(setting: Setting, out_dir: Path) -> dict[str, Any]:
    """Pretrain the base model on general text only and save it as an HF directory.

    The tokenizer is the shipped demo one (trained on Austen + Metamath), so the domain corpus
    is tokenised sensibly although the model never saw it.

    Returns:
        dict: pretraining record (tokens, losses, seconds), also written as ``pretrain.json``.
    """
    arch = setting.architecture
    tokenizer_dir = DEMO_DIR / "base_model"
    tokenizer = qwen3_tokenizer(str(tokenizer_dir))
    tokens = general_stream(tokenizer)
    torch.manual_seed(setting.seed)
    model = arch.build()
    with torch.no_grad():  # torchtune leaves nn.Embedding at N(0, 1): huge tied logits at step 0
        model.tok_embeddings.weight.normal_(0.0, 0.02)
    num_params = sum(p.numel() for p in model.parameters())
    print(
        f"pretraining a {arch.num_layers}-layer Qwen3 ({num_params:,} parameters) on "
        f"general.txt ({tokens.numel():,} tokens) for {setting.pretrain_steps} steps of "
        f"{setting.pretrain_batch_size}x{setting.seq_len} tokens ...",
        flush=True,
    )
    start = time.perf_counter()
    losses = pretrain(
        model,
        tokens,
        setting.pretrain_steps,
        seq_len=setting.seq_len,
        batch_size=setting.pretrain_batch_size,
        lr=setting.pretrain_lr,
        seed=setting.seed,
    )
    seconds = time.perf_counter() - start
    tail = losses[-20:]
    record = {
        "parameters": num_params,
        "corpus_tokens": tokens.numel(),
        "trained_tokens": setting.pretrain_steps * setting.pretrain_batch_size * setting.seq_len,
        "first_loss": losses[0],
        "final_loss_mean_last_20": sum(tail) / len(tail),
        "seconds": seconds,
    }
    print(
        f"pretrained: loss {losses[0]:.3f} -> {record['final_loss_mean_last_20']:.3f} in {seconds:.0f}s"
    )
    common.write_hf_model(
        out_dir,
        model,
        arch,
        {"bos_token_id": None, "eos_token_id": tokenizer.eos_id, "torch_dtype": "float32"},
        files=[tokenizer_dir / name for name in TOKENIZER_FILES],
        extra_json={"pretrain.json": {**record, "losses": losses}},
    )
    return record


def ensure_base_model(setting: Setting) -> tuple[Path, dict[str, Any], bool]:
    """The cached base model, pretraining it first if missing.

    Returns:
        tuple: (HF directory, pretraining record, whether it was built in this invocation).
    """
    out_dir = base_model_dir(setting)
    if (out_dir / "pretrain.json").is_file():
        record = json.loads((out_dir / "pretrain.json").read_text())
        record.pop("losses", None)
        print(f"reusing the cached base model {out_dir} (pretrained in {record['seconds']:.0f}s)")
        return out_dir, record, False
    return out_dir, build_base_model(setting, out_dir), True


# ------------------------------------------------------------------------------ recipe runs


def count_paragraphs(path: Path) -> int:
    """Rows ``probe_dataset`` reads from a ``.txt`` file (blank-line-separated paragraphs)."""
    return len(read_rows(str(path), "train", None, False, field="canary source"))


def recipe_overrides(
    setting: Setting, spec: RunSpec, base_dir: Path, output_dir: Path
) -> list[str]:
    """``key=value`` overrides of ``tiny_demo`` for one run; equal for every method but lr."""
    general = setting.canary_samples or count_paragraphs(GENERAL_HELDOUT)
    domain = setting.canary_samples or count_paragraphs(DOMAIN_HELDOUT)
    s = setting.seq_len
    return [
        f"output_dir={output_dir}",
        f"method={spec.method}",
        f"seed={setting.seed}",
        f"checkpointer.checkpoint_dir={base_dir}",
        f"model.max_seq_len={s}",
        f"tokenizer.max_seq_len={s}",
        f"dataset.max_seq_len={s}",
        f"batch_size={setting.batch_size}",
        f"max_steps={setting.steps}",
        f"optimizer.lr={spec.lr}",
        f"lr_scheduler.num_warmup_steps={max(5, setting.steps // 20)}",
        f"expansion.num_layers={setting.k}",
        f"unit_tuning.refresh_every={setting.refresh_every}",
        f"unit_tuning.min_scale={setting.min_scale}",
        f"unit_tuning.separate_norm_range={setting.separate_norm_range}",
        f"canary.every_n_steps={setting.canary_every}",
        f"canary.general.num_samples={general}",
        f"canary.general.max_seq_len={s}",
        f"canary.domain.num_samples={domain}",
        f"canary.domain.max_seq_len={s}",
        "save_every_n_steps=0",
    ]


def run_method(setting: Setting, spec: RunSpec, base_dir: Path, runs_dir: Path) -> RunResult:
    """Run the recipe in this process for one method and read back what it measured."""
    output_dir = runs_dir / spec.name
    shutil.rmtree(output_dir, ignore_errors=True)
    argv = ["--config", "tiny_demo", *recipe_overrides(setting, spec, base_dir, output_dir)]
    print(f"\n=== {spec.name}", flush=True)
    wall, messages = common.run_recipe(argv)
    shutil.rmtree(output_dir / "final", ignore_errors=True)  # weights: not needed, ~50 MB
    curve = json.loads((output_dir / "canary.json").read_text())
    # Canary passes are benchmark overhead, not method cost: the recipe logs each one's time.
    canary_s = common.metric_values(common.read_metric_log(output_dir / "logs"), "canary/seconds")
    trainable, total = common.trainable_counts(messages)
    last = curve[-1]
    return RunResult(
        name=spec.name,
        method=spec.method,
        lr=spec.lr,
        tokens=setting.steps * setting.batch_size * setting.seq_len,
        trainable=trainable,
        total=total,
        layers=common.copied_layers(messages),
        general_base=last["general_base"],
        general_final=last["general_loss"],
        domain_base=last["domain_base"],
        domain_final=last["domain_loss"],
        wall_s=wall,
        canary_s=sum(canary_s) if canary_s else None,
        curve=curve,
    )


# ---------------------------------------------------------------------------------- report


def markdown_table(results: list[RunResult]) -> str:
    """One row per run: forgetting, domain gain, trained parameters, wall time."""
    lines = [
        "| run | method | lr | copied layers | trained params (share) | general Δ (final − base) "
        "| domain Δ (base − final) | general / domain final | wall s (canary s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        canary = "n/a" if r.canary_s is None else f"{r.canary_s:.0f}"
        lines.append(
            f"| {r.name} | {r.method} | {r.lr:g} | {r.layers} | {r.trainable:,} "
            f"({100 * r.trainable / r.total:.1f}%) | {r.general_increase:+.4f} "
            f"| {r.domain_decrease:+.4f} | {r.general_final:.4f} / {r.domain_final:.4f} "
            f"| {r.wall_s:.0f} ({canary}) |"
        )
    base = results[0]
    lines.append(
        f"\nBase model: general held-out loss {base.general_base:.4f}, domain held-out loss "
        f"{base.domain_base:.4f}. Budget per run: {base.tokens:,} tokens."
    )
    return "\n".join(lines)


def goal_checks(results: list[RunResult]) -> list[str]:
    """The paper's direction at small scale, checked against every ``full`` run."""
    by_name = {r.name: r for r in results}
    adept, llama = by_name.get("adept"), by_name.get("llama_pro")
    if adept is None:
        return []
    lines = []
    for full in (r for r in results if r.method == "full"):
        if full.general_increase > 0:
            ratio = adept.general_increase / full.general_increase
            forgetting = f"{ratio:.2f} (goal ≤ 0.30: {'met' if ratio <= 0.3 else 'not met'})"
        else:
            forgetting = "undefined (full CPT did not raise the general loss)"
        rel = (adept.domain_final - full.domain_final) / full.domain_final
        gain = adept.domain_decrease / full.domain_decrease if full.domain_decrease else math.inf
        lines.append(
            f"- vs {full.name} (lr {full.lr:g}): ADEPT general increase / full's = {forgetting}; "
            f"ADEPT domain final loss "
            f"{100 * rel:+.1f}% vs full's (goal ≤ +3%: {'met' if rel <= 0.03 else 'not met'}); "
            f"ADEPT domain decrease = {gain:.2f}× full's"
        )
    if llama is not None:
        ok = adept.general_increase < llama.general_increase
        lines.append(
            f"- vs llama_pro (same k): ADEPT general increase {adept.general_increase:+.4f} vs "
            f"{llama.general_increase:+.4f} (goal: lower: {'met' if ok else 'not met'}); domain "
            f"decrease {adept.domain_decrease:+.4f} vs {llama.domain_decrease:+.4f}"
        )
    return lines


_COLORS = {
    "full": "tab:red",
    "llama_pro": "tab:orange",
    "no_stage2": "tab:blue",
    "adept": "tab:green",
}


def plot(results: list[RunResult], title: str, path: Path) -> Path:
    """Canary curves of every run (general increase, domain loss) and the final trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_gen, ax_dom, ax_trade) = plt.subplots(1, 3, figsize=(16, 4.8))
    styles = ["-", "--", ":", "-."]
    seen: dict[str, int] = {}
    for r in results:
        index = seen[r.method] = seen.get(r.method, -1) + 1
        style = {"color": _COLORS.get(r.method, "gray"), "linestyle": styles[index % 4]}
        label = f"{r.method} (lr {r.lr:g})"
        steps = [0] + [p["step"] for p in r.curve]
        gen = [0.0] + [p["general_loss"] - p["general_base"] for p in r.curve]
        dom = [r.domain_base] + [p["domain_loss"] for p in r.curve]
        ax_gen.plot(steps, gen, marker="o", ms=3, label=label, **style)
        ax_dom.plot(steps, dom, marker="o", ms=3, label=label, **style)
        ax_trade.scatter(r.general_increase, r.domain_decrease, s=60, color=style["color"])
        ax_trade.annotate(
            label, (r.general_increase, r.domain_decrease), textcoords="offset points",
            xytext=(6, 4), fontsize=8,
        )  # fmt: skip
    ax_gen.set(xlabel="CPT step", ylabel="general held-out loss − base", title="Forgetting")
    ax_dom.set(xlabel="CPT step", ylabel="domain held-out loss", title="Domain learning")
    ax_trade.set(
        xlabel="general loss increase (lower is better)",
        ylabel="domain loss decrease (higher is better)",
        title="Final trade-off (up-left is better)",
    )
    ax_trade.margins(x=0.25, y=0.1)
    for ax in (ax_gen, ax_dom, ax_trade):
        ax.grid(alpha=0.3)
    ax_gen.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="< 3 min smoke run, toy budgets (results to benchmarks/.cache/quick_results)",
    )
    parser.add_argument("--steps", type=int, help="CPT optimizer steps per method")
    parser.add_argument("--lr", type=float, help="learning rate of every method")
    parser.add_argument("--full-lr", type=float, help="extra full-CPT run at this LR (0 skips it)")
    parser.add_argument("--k", type=int, help="layers to expand (adept, no_stage2, llama_pro)")
    parser.add_argument("--refresh-every", type=int, help="ADEPT unit re-scoring interval")
    parser.add_argument("--min-scale", type=float, help="ADEPT scale of the most critical unit")
    parser.add_argument(
        "--separate-norm-range",
        action="store_true",
        default=None,
        help="ADEPT: normalise norm and matrix unit scores separately (spec S2.3 option)",
    )
    parser.add_argument(
        "--methods",
        default="full,llama_pro,no_stage2,adept",
        help="comma-separated subset of full,llama_pro,no_stage2,adept (default: all)",
    )
    parser.add_argument("--pretrain-steps", type=int, help="base-model pretraining steps")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. _lr5e-4")
    return parser.parse_args(argv)


def setting_from(args: argparse.Namespace) -> Setting:
    setting = QUICK_SETTING if args.quick else FULL_SETTING
    overrides = {
        "steps": args.steps,
        "lr": args.lr,
        "full_lr": args.full_lr,
        "k": args.k,
        "refresh_every": args.refresh_every,
        "min_scale": args.min_scale,
        "separate_norm_range": args.separate_norm_range,
        "pretrain_steps": args.pretrain_steps,
        "seed": args.seed,
    }
    setting = dataclasses.replace(setting, **{k: v for k, v in overrides.items() if v is not None})
    if setting.full_lr == 0:
        setting = dataclasses.replace(setting, full_lr=None)
    return setting


def run_specs(setting: Setting, methods: list[str]) -> list[RunSpec]:
    """The runs, in the order of the table: ``full`` (at ``lr``, then ``full_lr``) first."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; use a subset of {','.join(METHODS)}")
    specs = []
    if "full" in methods:
        specs.append(RunSpec("full", "full", setting.lr))
        if setting.full_lr is not None and setting.full_lr != setting.lr:
            specs.append(RunSpec(f"full_lr{setting.full_lr:g}", "full", setting.full_lr))
    specs += [RunSpec(m, m, setting.lr) for m in METHODS[1:] if m in methods]
    return specs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    provenance = common.provenance([__file__, *argv])
    print(f"command: {provenance['command']}\n{common.provenance_line(provenance)}", flush=True)
    setting = setting_from(args)
    tag = args.tag + ("_quick" if args.quick and "quick" not in args.tag else "")
    print(f"setting: {setting}", flush=True)
    start = time.perf_counter()

    base_dir, pretrain_record, built = ensure_base_model(setting)
    runs_dir = CACHE_DIR / f"runs{tag}"
    specs = run_specs(setting, [m.strip() for m in args.methods.split(",") if m.strip()])
    results = [run_method(setting, spec, base_dir, runs_dir) for spec in specs]
    total = time.perf_counter() - start

    arch = setting.architecture
    title = (
        f"{arch.num_layers}-layer Qwen3 (dim {arch.embed_dim}) pretrained on Austen, CPT on "
        f"Metamath maths: {setting.steps} steps × {setting.batch_size}×{setting.seq_len} tokens, "
        f"k={setting.k}, refresh every {setting.refresh_every}, min_scale {setting.min_scale:g}"
        + (", separate norm range" if setting.separate_norm_range else "")
        + f", seed {setting.seed}"
    )
    out_dir = common.results_dir(args.quick)
    png = plot(results, title, out_dir / f"forgetting{tag}.png")
    table = markdown_table(results)
    checks = goal_checks(results)
    runtime = (
        f"Runtime: {total / 60:.1f} min in all ("
        + (
            f"pretraining {pretrain_record['seconds'] / 60:.1f} min, "
            if built
            else "base model cached, "
        )
        + f"{sum(r.wall_s for r in results) / 60:.1f} min of recipe runs)"
    )
    report = "\n".join(
        [
            f"command: {provenance['command']}",
            common.provenance_line(provenance),
            "",
            table,
            "",
            *checks,
            "",
            runtime,
        ]
    )
    (out_dir / f"forgetting{tag}.md").write_text(report + "\n")
    record = {
        "command": provenance["command"],
        "provenance": provenance,
        "setting": dataclasses.asdict(setting),
        "base_model": {"dir": str(base_dir), "pretrain": pretrain_record, "built_now": built},
        "runs": [
            {
                **dataclasses.asdict(r),
                "general_increase": r.general_increase,
                "domain_decrease": r.domain_decrease,
            }
            for r in results
        ],
        "total_seconds": total,
    }
    (out_dir / f"forgetting{tag}.json").write_text(json.dumps(record, indent=1))
    print("\n" + report)
    print(f"\nplot: {png}\nrecord: {out_dir / f'forgetting{tag}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
