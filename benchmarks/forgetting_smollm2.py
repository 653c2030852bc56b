"""Benchmark: the forgetting frontier on a real pretrained model (SmolLM2-135M-Instruct).

Does ADEPT gain the domain while losing less general competence than full continual
pretraining at its best learning rate? Every run goes through the real recipe
(``adept_cpt.main`` with the ``smollm2_135m_medical`` config and overrides) with the same seed,
data order and token budget; only the method and its learning rate differ:

- ``full`` and ``adept`` across learning rates (one frontier line each);
- ``llama_pro``, ``no_stage2``, ``random`` and ``no_stage1`` at ADEPT's best rate (the one with
  the largest domain gain minus mean general increase).

Stage 1 is probed once (a ``stage1_only`` run) and every run reads that profile
(``expansion.profile``), so the probe is paid once. After each run the final checkpoint is
evaluated on three held-out sets, with the base model's values beside them: Wikipedia leads
(general, encyclopedic), State of the Union paragraphs (general, speeches) and held-out documents
of the domain (``--domain medical``, the default, or ``maths``: Wikipedia Mathematics leads and
the Maxima manual, 50 steps). Per run: general and domain deltas, trained parameters, median step time
relative to full CPT, wall time; for expansion runs also each copy's effect on the general
loss when it is skipped, and the unit learning-rate scales of the last re-scoring.

Results go to ``benchmarks/results/forgetting_smollm2{_maths}{tag}.{json,md,png}`` (a ``--quick``
smoke run's to the ignored ``benchmarks/.cache/quick_results/``); the JSON is rewritten after
every run, and a rerun with the same tag skips the runs already in it. Each invocation adds its
command to ``commands`` and its commit, libraries and machine to ``provenance``.

Needs the prepared model and text (see ``prepare_smollm2.py``, ``prepare_real_text.py``)::

    python benchmarks/forgetting_smollm2.py --model-dir ~/models/SmolLM2-135M-Instruct \\
        --data-dir ~/data/adept_real_text                  # ~2 h on 2 CPU cores
    python benchmarks/forgetting_smollm2.py ... --device cuda   # bf16, fp32 copies: minutes
    python benchmarks/forgetting_smollm2.py ... --quick         # smoke run, toy budget
    python benchmarks/forgetting_smollm2.py --report-only       # .md/.png again from the JSON

The model is the instruct checkpoint with dequantized 4-bit weights, not the published base.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import common
import torch
from forgetting import RunSpec
from torch import nn

from adept_components.checkpointing import HFCheckpointer
from adept_components.data import probe_batches, probe_dataset
from adept_components.expansion import load_expansion_metadata
from adept_components.importance.layer_importance import probe_loss
from adept_components.models import model_from_hf_config
from adept_components.models.tokenizers import hf_tokenizer

CACHE_DIR = common.CACHE_DIR / "forgetting_smollm2"
GENERAL_HELDOUT = {
    "general_wiki": "general_heldout_wiki.txt",
    "general_speech": "general_heldout_speech.txt",
}


@dataclasses.dataclass(frozen=True)
class Domain:
    """One domain of the benchmark: its training and held-out text and its step budget."""

    train: str
    heldout: str
    steps: int


# Maths runs half the medical budget so that its frontier fits the same CPU time; every run of
# one domain has the same budget, which is what the comparison needs.
DOMAINS = {
    "medical": Domain("medical_train.txt", "medical_heldout.txt", steps=100),
    "maths": Domain("maths_train.txt", "maths_heldout.txt", steps=50),
}
ABLATIONS = ("llama_pro", "no_stage2", "random", "no_stage1")


@dataclasses.dataclass(frozen=True)
class Setting:
    """What every run shares."""

    steps: int = 100
    batch_size: int = 4
    seq_len: int = 256
    k: int = 4
    refresh_every: int = 25
    warmup: int = 10
    eval_samples: int = 32
    seed: int = 0
    full_lrs: tuple[float, ...] = (1e-5, 3e-5, 1e-4)
    adept_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


QUICK = Setting(
    steps=4, refresh_every=2, warmup=1, eval_samples=4, full_lrs=(1e-4,), adept_lrs=(1e-3,)
)


class _Skipped(nn.Module):
    """A decoder layer taken out of the residual stream: returns its input."""

    def forward(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        return x


def base_overrides(args: argparse.Namespace, setting: Setting, output_dir: Path) -> list[str]:
    """Overrides every run shares: paths, budget, seed, device, no canary (evaluated after)."""
    s = setting.seq_len
    overrides = [
        f"output_dir={output_dir}",
        f"data_dir={args.data_dir}",
        f"checkpointer.checkpoint_dir={args.model_dir}",
        f"dataset.source={args.data_dir / DOMAINS[args.domain].train}",
        f"seed={setting.seed}",
        f"device={args.device}",
        f"model.max_seq_len={s}",
        f"tokenizer.max_seq_len={s}",
        f"dataset.max_seq_len={s}",
        f"dataset.cache_dir={CACHE_DIR / 'token_cache'}",
        f"batch_size={setting.batch_size}",
        f"max_steps={setting.steps}",
        f"lr_scheduler.num_warmup_steps={setting.warmup}",
        f"expansion.num_layers={setting.k}",
        f"unit_tuning.refresh_every={setting.refresh_every}",
        "canary.every_n_steps=0",
        "save_every_n_steps=0",
        "log_every_n_steps=1",
    ]
    if args.device == "cuda":
        overrides += ["dtype=bf16", "trainable_dtype=fp32"]
    return overrides + list(args.override)


class Evaluator:
    """Held-out losses of a checkpoint on the three sets, plus copy-skip diagnostics."""

    def __init__(self, args: argparse.Namespace, setting: Setting) -> None:
        self.device = torch.device(args.device)
        tokenizer = hf_tokenizer(str(args.model_dir))
        self.batches = {}
        heldout = {**GENERAL_HELDOUT, "domain": DOMAINS[args.domain].heldout}
        for name, filename in heldout.items():
            data = probe_dataset(
                tokenizer,
                str(Path(args.data_dir).expanduser() / filename),
                num_samples=setting.eval_samples,
                max_seq_len=setting.seq_len,
            )
            self.batches[name] = probe_batches(data, 8)
        self.seq_len = setting.seq_len

    def load(self, directory: Path) -> nn.Module:
        model = model_from_hf_config(str(directory), max_seq_len=self.seq_len)
        HFCheckpointer(str(directory), str(directory)).load_into(model)
        return model.to(device=self.device, dtype=torch.float32).eval()

    def losses(self, model: nn.Module) -> dict[str, float]:
        return {name: probe_loss(model, batches) for name, batches in self.batches.items()}

    def copy_skips(self, model: nn.Module, positions: list[int]) -> dict[str, float]:
        """General (Wikipedia) loss with each copy skipped, minus the trained model's."""
        full = probe_loss(model, self.batches["general_wiki"])
        out = {}
        for position in positions:
            layer, model.layers[position] = model.layers[position], _Skipped()
            try:
                out[str(position)] = probe_loss(model, self.batches["general_wiki"]) - full
            finally:
                model.layers[position] = layer
        return out


def output_norms(model: nn.Module, positions: list[int]) -> dict[str, dict[str, float]]:
    """Frobenius norms of each copy's zero-initialised projections after training."""
    return {
        str(p): {
            "output_proj": model.layers[p].attn.output_proj.weight.norm().item(),
            "w2": model.layers[p].mlp.w2.weight.norm().item(),
        }
        for p in positions
    }


def plan(setting: Setting, adept_best: float | None) -> list[RunSpec]:
    runs = [RunSpec(f"adept_lr{lr:g}", "adept", lr) for lr in setting.adept_lrs]
    runs += [RunSpec(f"full_lr{lr:g}", "full", lr) for lr in setting.full_lrs]
    if adept_best is not None:
        runs += [RunSpec(f"{m}_lr{adept_best:g}", m, adept_best) for m in ABLATIONS]
    return runs


def best_adept_lr(results: dict[str, dict[str, Any]]) -> float | None:
    """ADEPT's best rate: largest domain gain minus mean general increase."""
    adept = [r for r in results.values() if r["method"] == "adept" and not r.get("variant")]
    if not adept:
        return None
    return max(adept, key=lambda r: r["domain_gain"] - r["general_increase"])["lr"]


def step_floor(
    model: nn.Module, trained: list[int] | None, base_layers: int, seq_len: int
) -> float:
    """Compute floor of a run relative to full CPT of the base model: matmul FLOPs per token.

    Args:
        model (nn.Module): the trained model (expanded or not).
        trained (list[int] | None): positions of its trained layers; None when all train.
        base_layers (int): layers of the base model.
        seq_len (int): tokens per sequence.

    Returns:
        float: the run's FLOPs over full CPT's (``common.flops_per_token``).
    """
    numbers = common.layer_numbers(model)
    run = common.flops_per_token(numbers, len(model.layers), seq_len, trained)
    return run.model / common.flops_per_token(numbers, base_layers, seq_len).model


def execute(
    args: argparse.Namespace, setting: Setting, run: RunSpec, profile: Path, evaluator: Evaluator,
    base: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    output_dir = CACHE_DIR / f"runs{args.tag}" / run.name
    shutil.rmtree(output_dir, ignore_errors=True)
    argv = ["--config", "smollm2_135m_medical", *base_overrides(args, setting, output_dir)]
    argv += [f"method={run.method}", f"optimizer.lr={run.lr}", f"expansion.profile={profile}"]
    wall, messages = common.run_recipe(argv)
    rows = common.read_metric_log(output_dir / "logs")
    seconds, _ = common.step_times(rows, setting.batch_size * (setting.seq_len - 1))
    trainable, total = common.trainable_counts(messages)
    trained = common.trained_layers(messages)
    final = output_dir / "final"
    metadata = load_expansion_metadata(final)
    positions = list(metadata.copy_positions) if metadata else None
    model = evaluator.load(final)
    losses = evaluator.losses(model)
    record: dict[str, Any] = {
        **dataclasses.asdict(run),
        "losses": losses,
        "general_increase_wiki": losses["general_wiki"] - base["general_wiki"],
        "general_increase_speech": losses["general_speech"] - base["general_speech"],
        "domain_gain": base["domain"] - losses["domain"],
        "trainable": trainable,
        "total": total,
        "layers": common.copied_layers(messages)
        if run.method != "no_stage1"
        else f"none (trains {trained})",
        "copy_positions": positions,
        "step_s_median": statistics.median(seconds[2:] or seconds),
        "step_floor_vs_full": step_floor(
            model, trained, len(model.layers) - len(positions or []), setting.seq_len
        ),
        "wall_s": wall,
        "unit_scales": common.latest_values(rows, "scale/"),
    }
    record["general_increase"] = (
        record["general_increase_wiki"] + record["general_increase_speech"]
    ) / 2
    if positions:
        record["copy_skip_general_wiki"] = evaluator.copy_skips(model, positions)
        record["copy_output_norms"] = output_norms(model, positions)
    shutil.rmtree(final, ignore_errors=True)  # 0.6 GB of weights per run
    print(
        f"--> {run.name}: general +{record['general_increase']:.4f} (wiki "
        f"{record['general_increase_wiki']:+.4f}, speech {record['general_increase_speech']:+.4f})"
        f", domain gain {record['domain_gain']:+.4f}, {record['step_s_median']:.2f} s/step, "
        f"wall {wall:.0f}s",
        flush=True,
    )
    return record


def ensure_profile(args: argparse.Namespace, setting: Setting) -> tuple[Path, float]:
    """Stage 1 once: a ``stage1_only`` ADEPT run whose profile every run reuses."""
    out = CACHE_DIR / f"stage1{args.profile_tag}"  # general probe: one profile for all domains
    profile = out / "profile" / "layer_importance.json"
    if profile.is_file():
        return profile, 0.0
    shutil.rmtree(out, ignore_errors=True)
    argv = ["--config", "smollm2_135m_medical", *base_overrides(args, setting, out)]
    wall, _ = common.run_recipe([*argv, "method=adept", "stage1_only=true"])
    shutil.rmtree(out / "final", ignore_errors=True)
    return profile, wall


def write_report(record: dict[str, Any], tag: str, out_dir: Path) -> None:
    """Table (markdown) and the frontier picture from the record, into ``out_dir``."""
    runs = list(record["runs"].values())
    full_step = (  # median over full's runs: robust to one run slowed by another job
        statistics.median(r["step_s_median"] for r in runs if r["method"] == "full")
        if any(r["method"] == "full" for r in runs)
        else None
    )
    base = record["base"]
    commands = record.get("commands") or [record["command"]]
    lines = [
        *(f"command: {command}" for command in commands),
        *provenance_lines(record.get("provenance", []), commands),
        "",
        f"Base model: general held-out loss {base['general_wiki']:.4f} (Wikipedia), "
        f"{base['general_speech']:.4f} (speeches); domain held-out loss {base['domain']:.4f}. "
        f"Budget per run: {record['setting']['tokens']:,} tokens.",
        "",
        "| run | method | lr | copied layers | trained params (share) | general Δ wiki | general Δ "
        "speech | domain gain | step time vs full | floor vs full | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ratio = f"{r['step_s_median'] / full_step:.2f}×" if full_step else "n/a"
        lines.append(
            f"| {r['name']} | {r['method']} | {r['lr']:g} | {r['layers']} | {r['trainable']:,} "
            f"({100 * r['trainable'] / r['total']:.1f}%) | {r['general_increase_wiki']:+.4f} | "
            f"{r['general_increase_speech']:+.4f} | {r['domain_gain']:+.4f} | {ratio} | "
            f"{r['step_floor_vs_full']:.2f}× | {r['wall_s']:.0f} |"
        )
    lines += ["", *verdict(runs), "", *diagnostics(runs), ""]
    lines += [f"Runtime: {record['seconds'] / 60:.1f} min in all (stage 1 probe "
              f"{record['stage1_s'] / 60:.1f} min, once)."]  # fmt: skip
    (out_dir / f"forgetting_smollm2{tag}.md").write_text("\n".join(lines) + "\n")
    plot_frontier(runs, out_dir / f"forgetting_smollm2{tag}.png", record.get("domain", "medical"))


def provenance_lines(invocations: list[dict[str, Any]], commands: list[str]) -> list[str]:
    """One provenance line per invocation, naming its command's number when there are several.

    Args:
        invocations (list[dict]): ``common.provenance`` of every invocation, in order (records
            written before provenance was kept have none).
        commands (list[str]): the distinct commands, as the report lists them.

    Returns:
        list[str]: the report lines.
    """
    lines = []
    for p in invocations:
        label = "provenance"
        if len(commands) > 1 and p["command"] in commands:
            label += f" (command {commands.index(p['command']) + 1})"
        lines.append(common.provenance_line(p, label))
    return lines


def frontier_at(runs: list[dict[str, Any]], gain: float, key: str) -> float | None:
    """General increase of a method's frontier at domain gain ``gain`` (linear between its
    learning rates; None outside the range its runs cover)."""
    points = sorted((r["domain_gain"], r[key]) for r in runs)
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= gain <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (gain - x0) / (x1 - x0)
    return points[0][1] if len(points) == 1 and points[0][0] == gain else None


def verdict(runs: list[dict[str, Any]]) -> list[str]:
    """At equal domain gain, whose general loss rises least; best domain gains compared."""
    full = [r for r in runs if r["method"] == "full"]
    adept = [r for r in runs if r["method"] == "adept" and not r.get("variant")]
    lines = ["At equal domain gain (full CPT's frontier interpolated between its rates):", ""]
    for r in runs:
        if r["method"] == "full":
            continue
        parts = []
        for key, label in (
            ("general_increase_wiki", "wiki"),
            ("general_increase_speech", "speech"),
        ):
            ref = frontier_at(full, r["domain_gain"], key)
            if ref is None:
                parts.append(f"{label}: outside full's range")
            else:
                side = (
                    "below" if r[key] < ref - 2e-3 else "above" if r[key] > ref + 2e-3 else "equal"
                )
                parts.append(f"{label} {r[key]:+.4f} vs full {ref:+.4f} ({side})")
        lines.append(f"- {r['name']} (gain {r['domain_gain']:+.4f}): " + "; ".join(parts))
    if full and adept:
        best_full = max(r["domain_gain"] for r in full)
        best_adept = max(r["domain_gain"] for r in adept)
        gap = 100 * (best_full - best_adept) / best_full
        lines.append(
            f"- best domain gain: ADEPT {best_adept:+.4f} vs full {best_full:+.4f}: ADEPT "
            f"{gap:.1f}% below (goal: within 3%: {'met' if gap <= 3 else 'not met'})"
        )
    return lines


def diagnostics(runs: list[dict[str, Any]]) -> list[str]:
    """Per expansion run: what each copy does to the general loss, how far its zero-initialised
    projections moved, and the unit scales of the last re-scoring."""
    lines = ["Per copy (position): general (Wikipedia) loss change when the trained copy is "
             "skipped, and the Frobenius norms of its zero-initialised o_proj / down_proj:", ""]  # fmt: skip
    for r in runs:
        if not r.get("copy_positions"):
            continue
        cells = [
            f"{p}: skip {r['copy_skip_general_wiki'][str(p)]:+.4f}, |o| "
            f"{r['copy_output_norms'][str(p)]['output_proj']:.3f}, |down| "
            f"{r['copy_output_norms'][str(p)]['w2']:.3f}"
            for p in r["copy_positions"]
        ]
        lines.append(f"- {r['name']}: " + "; ".join(cells))
    lines += ["", "Unit LR scales after the last re-scoring (min / median / max):", ""]
    for r in runs:
        scales = r.get("unit_scales") or {}
        if not scales or len(set(scales.values())) == 1:
            continue
        norms = [v for k, v in scales.items() if "norm" in k]
        mats = [v for k, v in scales.items() if "norm" not in k]
        lines.append(
            f"- {r['name']}: matrices {min(mats):.2f} / {statistics.median(mats):.2f} / "
            f"{max(mats):.2f}; norms {min(norms):.2f} / {statistics.median(norms):.2f} / "
            f"{max(norms):.2f}"
        )
    return lines


_COLORS = {
    "full": "tab:red",
    "adept": "tab:green",
    "llama_pro": "tab:orange",
    "no_stage2": "tab:blue",
    "random": "tab:purple",
    "no_stage1": "tab:brown",
}


_VARIANT_COLORS = ("olive", "cyan", "magenta", "black", "gold", "navy", "lime", "gray",
                   "teal", "salmon", "indigo", "chocolate", "orchid", "darkkhaki")  # fmt: skip
_VARIANT_MARKERS = ("s", "D", "^", "v", "P", "X")


def plot_frontier(runs: list[dict[str, Any]], path: Path, domain: str) -> None:
    """Domain gain (x) against general loss increase (y), one line per method across lrs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharex=True)
    for ax, key, title in (
        (axes[0], "general_increase_wiki", "general: Wikipedia leads"),
        (axes[1], "general_increase_speech", "general: State of the Union"),
    ):
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            groups.setdefault(r.get("variant") or r["method"], []).append(r)
        variants = [label for label, group in groups.items() if group[0].get("variant")]
        for label, group in groups.items():
            group = sorted(group, key=lambda r: r["lr"])
            if group[0].get("variant"):  # ADEPT with one change: its own colour, square marks
                index = variants.index(label)
                color = _VARIANT_COLORS[index % len(_VARIANT_COLORS)]
                style, marker = "--", _VARIANT_MARKERS[index // len(_VARIANT_COLORS) % 6]
            else:
                color, style, marker = _COLORS.get(group[0]["method"], "gray"), "-", "o"
            xs, ys = [r["domain_gain"] for r in group], [r[key] for r in group]
            ax.plot(xs, ys, marker=marker, color=color, linestyle=style, label=label)
            for r, x, y in zip(group, xs, ys, strict=True):
                ax.annotate(f"{r['lr']:g}", (x, y), textcoords="offset points", xytext=(4, 3),
                            fontsize=7)  # fmt: skip
        ax.set(xlabel="domain held-out loss decrease (nats)", ylabel="general held-out loss "
               "increase (nats)", title=f"{title} (down-right is better)")  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"SmolLM2-135M-Instruct (dequantized Q4_1), {domain} CPT, equal budget", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("~/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--data-dir", type=Path, default=Path("~/data/adept_real_text"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run with a toy budget (results to benchmarks/.cache/quick_results)",
    )
    parser.add_argument(
        "--domain",
        default="medical",
        choices=sorted(DOMAINS),
        help="the domain trained on and measured (results of a non-medical one are suffixed "
        "with _DOMAIN)",
    )
    parser.add_argument("--tag", default="", help="suffix of the result files and run dirs")
    parser.add_argument("--only", default="", help="comma-separated run names to do (default all)")
    parser.add_argument(
        "--variant",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "OVERRIDES"),
        help="an extra ADEPT line at every ADEPT lr, e.g. sepnorm "
        "'unit_tuning.separate_norm_range=true'",
    )
    parser.add_argument(
        "--variant-lrs",
        default="",
        help="comma-separated ADEPT lrs the variants run at (default: every ADEPT lr)",
    )
    parser.add_argument(
        "--variant-method",
        default="adept",
        help="the method the variants change (default adept), e.g. full for full CPT + replay",
    )
    parser.add_argument("--override", action="append", default=[], help="recipe key=value for all")
    parser.add_argument("--report-only", action="store_true", help="rewrite .md/.png from the JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.model_dir, args.data_dir = args.model_dir.expanduser(), args.data_dir.expanduser()
    setting = QUICK if args.quick else Setting(steps=DOMAINS[args.domain].steps)
    args.profile_tag = args.tag + ("_quick" if args.quick else "")
    tag = ("" if args.domain == "medical" else f"_{args.domain}") + args.profile_tag
    args.tag = tag
    out_dir = common.results_dir(args.quick)
    json_path = out_dir / f"forgetting_smollm2{tag}.json"
    record: dict[str, Any] = (
        json.loads(json_path.read_text()) if json_path.is_file() else {"runs": {}, "seconds": 0.0}
    )
    if args.report_only:
        if not record["runs"]:
            raise SystemExit(f"--report-only: no runs in {json_path}")
        write_report(record, tag, out_dir)
        print((out_dir / f"forgetting_smollm2{tag}.md").read_text())
        return 0
    provenance = common.provenance([__file__, *argv])
    record["command"] = provenance["command"]
    record.setdefault("commands", [])
    if record["command"] not in record["commands"]:
        record["commands"].append(record["command"])
    record.setdefault("provenance", []).append(provenance)
    record["setting"] = {**dataclasses.asdict(setting), "tokens": setting.tokens}
    record["domain"] = args.domain
    start = time.perf_counter() - record["seconds"]
    profile, stage1_s = ensure_profile(args, setting)
    record.setdefault("stage1_s", stage1_s)
    record["profile"] = json.loads(profile.read_text())["layer_scores"]["mask-out"]
    evaluator = Evaluator(args, setting)
    if "base" not in record:
        record["base"] = evaluator.losses(evaluator.load(args.model_dir))
    only = {n for n in args.only.split(",") if n}

    def save() -> None:
        record["seconds"] = time.perf_counter() - start
        json_path.write_text(json.dumps(record, indent=1))
        write_report(record, tag, out_dir)

    while True:
        pending = [
            r
            for r in plan(setting, best_adept_lr(record["runs"]))
            if r.name not in record["runs"] and (not only or r.name in only)
        ]
        variant_lrs = [float(lr) for lr in args.variant_lrs.split(",") if lr]
        method = args.variant_method
        for name, _ in args.variant:
            pending += [
                RunSpec(f"{method}_{name}_lr{lr:g}", method, lr)
                for lr in variant_lrs or setting.adept_lrs
                if f"{method}_{name}_lr{lr:g}" not in record["runs"]
            ]
        if not pending:
            break
        run = pending[0]
        variant = next((v for v in args.variant if run.name.startswith(f"{method}_{v[0]}_")), None)
        if variant:
            args.override.extend(shlex.split(variant[1]))
        result = execute(args, setting, run, profile, evaluator, record["base"])
        if variant:
            del args.override[-len(shlex.split(variant[1])) :]
            result["variant"] = f"{method} ({variant[0]})"
        record["runs"][run.name] = result
        save()
    save()
    print((out_dir / f"forgetting_smollm2{tag}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
