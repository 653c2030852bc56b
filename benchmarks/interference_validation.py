"""Does a stage-1 score predict the forgetting a trained copy causes? (copy-skip validation)

For one real model and domain, with the forgetting benchmark's preset (budget, held-out sets):

1. **Scores**: a ``stage1_only`` run with ``expansion.importance=interference`` gives, on the
   same probe set, every layer's mask-out, grad-cumulative, rank and interference scores, and
   what each pass cost (the profile's ``seconds``).
2. **Copies at every position**: two ADEPT runs, one with copies of the even layers and one of
   the odd ones (explicit ``expansion.layers``), at one learning rate, with the preset's
   budget and seed.
3. **Copy-skip diagnostic**: in each trained model, every copy is skipped in turn and the
   held-out losses measured on the same documents. A copy's *general effect* is the general
   loss with it minus without it (positive: the trained copy raises the general loss), its
   *domain effect* the domain loss without it minus with it (what it contributes), and its
   *interference* their ratio.
4. **Correlations**: across positions, the Spearman rank correlation of each stage-1 score of
   the copy's source layer with the measured general effect and with the measured
   interference, with a bootstrap 95% interval over positions. A score that picks copies which
   forget least should correlate positively (higher score: more forgetting; the k lowest are
   copied).

Resumable: the JSON is written after every part; a rerun skips the parts it holds.

    python benchmarks/interference_validation.py --model gemma3 --domain medical
    python benchmarks/interference_validation.py --model smollm2 --domain medical
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import common
import forgetting
from torch import nn

from adept_components.expansion import load_expansion_metadata
from adept_components.importance.layer_importance import tied_ranks

FORMAT = "adept-interference-validation-v1"
PREDICTORS = ("mask-out", "grad-cumulative", "rank", "interference")
# A data-free reference beside the probes: the layer's depth, shallower scoring higher, so its
# k lowest are the k deepest layers. A probe that predicts forgetting no better than depth
# alone has not earned its cost.
DEPTH = "depth (deepest k)"
# Documents per held-out set in the copy-skip evaluations: every copy of a run is measured on
# the same documents, so its effect is a paired difference; fewer than the benchmark's own.
SAMPLES = {"general": 32, "domain": 64}
# ADEPT's rate for the copies: 1e-3, the middle of both real models' ADEPT sweeps, where four
# copies already gain most of the domain (Gemma 3: 0.82 nats of ADEPT's best 0.90) and the
# general loss moves measurably, while nine copies at once are not yet far from one step's
# first-order picture that the scores assume.
DEFAULT_LR = {"gemma3": 1e-3, "smollm2": 1e-3, "tiny": 1e-3}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3", choices=sorted(forgetting.PRESETS))
    parser.add_argument("--domain", default=None)
    parser.add_argument("--lr", type=float, help="ADEPT's rate (default: the model's middle)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smoke run with a toy budget")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    bench = ["--model", args.model, "--device", args.device]
    bench += ["--domain", args.domain] if args.domain else []
    bench += ["--quick"] if args.quick else []
    inner = forgetting.parse_args(bench)
    inner.lr = args.lr or DEFAULT_LR[args.model]
    inner.report_only = args.report_only
    inner.stem = f"interference_validation_{args.model}_{inner.domain}"
    return inner


# ------------------------------------------------------------------------------ the parts


def stage1_scores(args: argparse.Namespace) -> dict[str, Any]:
    """Every layer's scores by every predictor on one probe set, and their cost."""
    out = forgetting.CACHE_DIR / f"validation_stage1_{args.model}"
    shutil.rmtree(out, ignore_errors=True)
    run = forgetting.RunSpec("stage1", "adept", args.lr)
    argv = ["--config", args.preset.config, *forgetting.base_overrides(args, args.preset, out, run)]
    wall, _ = common.run_recipe(
        [*argv, "method=adept", "stage1_only=true", "expansion.importance=interference"]
    )
    profile = json.loads((out / "profile" / "layer_importance.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "layer_scores": profile["layer_scores"],
        "selected": {m: _lowest(profile["layer_scores"][m], args.preset.k) for m in PREDICTORS},
        "seconds": profile["seconds"],
        "domain": profile["domain"],
        "base_loss": profile["base_loss"],
        "wall_s": wall,
    }


def train_copies(args: argparse.Namespace, name: str, layers: list[int]) -> Path:
    """ADEPT with copies of ``layers``; the trained model's HF directory."""
    out = forgetting.CACHE_DIR / f"validation_{args.model}_{args.domain}" / name
    shutil.rmtree(out, ignore_errors=True)
    run = forgetting.RunSpec(name, "adept", args.lr)
    argv = ["--config", args.preset.config, *forgetting.base_overrides(args, args.preset, out, run)]
    argv += [
        "method=adept",
        f"optimizer.lr={args.lr}",
        f"expansion.layers=[{','.join(map(str, layers))}]",
    ]
    common.run_recipe(argv)
    return out / "final"


def copy_skip(evaluator: forgetting.Evaluator, final: Path) -> dict[str, Any]:
    """Held-out losses of the trained model, and with each copy skipped in turn."""
    model = evaluator.load(final)
    metadata = load_expansion_metadata(final)
    full = evaluator.doc_losses(model)
    layers = model.layers
    effects = {}
    try:
        for source, position in zip(metadata.source_layers, metadata.copy_positions, strict=True):
            start = time.perf_counter()
            model.layers = nn.ModuleList(m for i, m in enumerate(layers) if i != position)
            skipped = evaluator.doc_losses(model)
            effects[str(source)] = _effect(full, skipped)
            print(f"--> copy of layer {source}: {effects[str(source)]} "
                  f"({time.perf_counter() - start:.0f}s)", flush=True)  # fmt: skip
    finally:
        model.layers = layers
    return {"losses": {k: forgetting.mean_loss(v) for k, v in full.items()}, "effects": effects}


def _effect(full: dict[str, list], skipped: dict[str, list]) -> dict[str, Any]:
    general = [name for name in full if name != "domain"]
    per_set = {n: forgetting.mean_loss(full[n]) - forgetting.mean_loss(skipped[n]) for n in general}
    general_effect = sum(per_set.values()) / len(per_set)
    domain_effect = forgetting.mean_loss(skipped["domain"]) - forgetting.mean_loss(full["domain"])
    return {
        "general_effect": general_effect,
        "general_by_set": per_set,
        "domain_effect": domain_effect,
        "interference": general_effect / domain_effect if domain_effect > 0 else None,
    }


# ------------------------------------------------------------------------------ statistics


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    rx, ry = tied_ranks(x), tied_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx > 0 and vy > 0 else 0.0


def _bootstrap(stat: Any, n: int, samples: int, seed: int) -> tuple[float, float]:
    """Percentile 95% interval of ``stat(pick)`` over resamples of ``n`` positions."""
    rng = random.Random(seed)
    values = sorted(stat([rng.randrange(n) for _ in range(n)]) for _ in range(samples))
    return values[int(0.025 * samples)], values[int(0.975 * samples) - 1]


def bootstrap_spearman(x: list[float], y: list[float], samples: int = 2000,
                       seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """Spearman's rho and a percentile 95% interval, resampling positions."""
    low, high = _bootstrap(
        lambda pick: spearman([x[i] for i in pick], [y[i] for i in pick]), len(x), samples, seed
    )
    return spearman(x, y), low, high


def _effects(record: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Source layer -> its copy's measured effects, over both runs."""
    return {int(s): e for run in record["runs"].values() for s, e in run["effects"].items()}


def _layer_scores(record: dict[str, Any], predictor: str) -> list[float]:
    """A predictor's score per base layer: the profile's, or minus the index for ``DEPTH``."""
    if predictor == DEPTH:
        return [-float(i) for i in range(len(record["stage1"]["layer_scores"]["mask-out"]))]
    return record["stage1"]["layer_scores"][predictor]


def _selected(record: dict[str, Any], predictor: str) -> list[int]:
    """The k layers a predictor copies (its k lowest scores)."""
    k = len(record["stage1"]["selected"]["mask-out"])
    return _lowest(_layer_scores(record, predictor), k)


def bootstrap_spearman_difference(a: list[float], b: list[float], y: list[float],
                                  samples: int = 2000,
                                  seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """rho(a, y) - rho(b, y) and a paired percentile 95% interval, resampling positions.

    Both predictors are scored on the same resampled positions, so the interval is that of the
    difference itself, narrower than two separate intervals suggest.
    """

    def stat(pick: list[int]) -> float:
        ys = [y[i] for i in pick]
        return spearman([a[i] for i in pick], ys) - spearman([b[i] for i in pick], ys)

    low, high = _bootstrap(stat, len(y), samples, seed)
    return spearman(a, y) - spearman(b, y), low, high


def differences(record: dict[str, Any], against: str = "mask-out") -> dict[str, list[float]]:
    """Predictor -> [difference, low, high] of its rho with the general effect minus ``against``'s."""
    effects = _effects(record)
    sources = sorted(effects)
    general = [effects[s]["general_effect"] for s in sources]
    base = [_layer_scores(record, against)[s] for s in sources]
    return {
        p: list(bootstrap_spearman_difference(
            [_layer_scores(record, p)[s] for s in sources], base, general))
        for p in (*PREDICTORS, DEPTH) if p != against
    }  # fmt: skip


def correlations(record: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Predictor -> measured quantity -> [rho, low, high] across the measured copies."""
    effects = _effects(record)
    sources = sorted(effects)
    out: dict[str, dict[str, list[float]]] = {}
    for predictor in (*PREDICTORS, DEPTH):
        scores = _layer_scores(record, predictor)
        out[predictor] = {}
        for measured in ("general_effect", "interference"):
            pairs = [(scores[s], effects[s][measured]) for s in sources
                     if effects[s][measured] is not None]  # fmt: skip
            if len(pairs) >= 4:
                xs, ys = zip(*pairs, strict=True)
                out[predictor][measured] = list(bootstrap_spearman(list(xs), list(ys)))
    return out


def _lowest(scores: list[float], k: int) -> list[int]:
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:k])


# ------------------------------------------------------------------------------ report


def _mean_of(effects: dict[int, dict[str, Any]], sources: list[int], key: str) -> str:
    """The mean of a measured quantity over some copies; a dash when one is missing."""
    values = [effects[s][key] if s in effects else None for s in sources]
    if not values or any(v is None for v in values):
        return "—"
    return f"{sum(values) / len(values):+.4f}"


def write_report(record: dict[str, Any], path: Path) -> None:
    """The markdown report; a record with the stage-1 scores only (runs to come) is reported too."""
    stage1 = record["stage1"]
    samples = record.get("samples", {})
    lines = [
        f"# Copy-skip validation of stage-1 scores: {record['model']}, {record['domain']}",
        "",
        f"ADEPT at lr {record['lr']:g}, {record['setting']['steps']} steps of "
        f"{record['setting']['batch_size']} x {record['setting']['seq_len']} tokens, seed 0; "
        f"copies of the even layers in one run, of the odd ones in another. Held-out: "
        f"{samples.get('general', '—')} documents per general set, "
        f"{samples.get('domain', '—')} of the domain.",
        "",
        "## Probe cost (same probe set)",
        "",
        "| pass | seconds |",
        "|---|---|",
        *(f"| {name} | {sec:.1f} |" for name, sec in stage1["seconds"].items()),
        "",
        "## Spearman correlation across positions (95% bootstrap interval)",
        "",
        "A predictor that copies the layers whose trained copies forget least correlates",
        "positively (a higher score: more forgetting; the k lowest are copied). The last columns",
        "are what its k copies measured: their mean general effect and mean ratio, beside the",
        "best k by measurement and the mean over every position (a random pick's expectation).",
        "",
        "| stage-1 score | with the general effect | with the measured ratio | k lowest "
        "| their general effect | their ratio |",
        "|---|---|---|---|---|---|",
    ]
    effects = _effects(record)
    for predictor, measured in record.get("correlations", {}).items():
        cells = [
            "{:+.2f} [{:+.2f}, {:+.2f}]".format(*measured[m]) if m in measured else "—"
            for m in ("general_effect", "interference")
        ]
        picked = _selected(record, predictor)
        lines.append(
            f"| {predictor} | {cells[0]} | {cells[1]} | {picked} | "
            f"{_mean_of(effects, picked, 'general_effect')} | "
            f"{_mean_of(effects, picked, 'interference')} |"
        )
    if record.get("correlations"):
        k = len(stage1["selected"]["mask-out"])
        best = sorted(sorted(effects, key=lambda s: (effects[s]["general_effect"], s))[:k])
        lines += [
            f"| measured (best k) | | | {best} | {_mean_of(effects, best, 'general_effect')} | "
            f"{_mean_of(effects, best, 'interference')} |",
            f"| every position | | | | {_mean_of(effects, sorted(effects), 'general_effect')} | "
            f"{_mean_of(effects, sorted(effects), 'interference')} |",
            "",
            "Against mask-out, paired (the same resampled positions): each score's rho with the",
            "general effect minus mask-out's, with its 95% interval.",
            "",
            "| stage-1 score | rho minus mask-out's |",
            "|---|---|",
            *(
                "| {} | {:+.2f} [{:+.2f}, {:+.2f}] |".format(p, *d)
                for p, d in differences(record).items()
            ),
        ]
    lines += [
        "",
        "## Per copy (source layer)",
        "",
        "Measured: the general effect, the domain effect and their ratio; then each stage-1 score",
        "of the source layer.",
        "",
        "| layer | general effect | domain effect | measured ratio | "
        + " | ".join(f"{p} score" for p in PREDICTORS)
        + " |",
        "|---|---|---|---|" + "---|" * len(PREDICTORS),
    ]
    for source in sorted(effects):
        e = effects[source]
        ratio = "—" if e["interference"] is None else f"{e['interference']:+.3f}"
        scores = " | ".join(f"{stage1['layer_scores'][p][source]:.4g}" for p in PREDICTORS)
        lines.append(
            f"| {source} | {e['general_effect']:+.4f} | {e['domain_effect']:+.4f} | {ratio} | "
            f"{scores} |"
        )
    lines += ["", common.provenance_line(record["provenance"][-1])]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out_dir = common.results_dir(args.quick)
    json_path = out_dir / f"{args.stem}.json"
    record = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if args.report_only:  # the correlations are derived: recomputed with the current code
        if "correlations" in record:
            record["correlations"] = correlations(record)
            tmp = json_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(json_path)
        write_report(record, out_dir / f"{args.stem}.md")
        return 0
    if args.model == "tiny":
        args.model_dir = forgetting.ensure_tiny_base(args.quick)
    else:
        args.model_dir = Path(args.preset.model_dir).expanduser()
    record.setdefault("format", FORMAT)
    record.update(model=args.model, domain=args.domain, lr=args.lr)
    record["setting"] = {
        k: v for k, v in dataclasses.asdict(args.preset).items() if k not in ("domains", "sweeps")
    }
    record.setdefault("provenance", []).append(common.provenance([__file__, *argv]))
    record.setdefault("runs", {})

    def save() -> None:
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(json_path)
        if record.get("stage1"):
            write_report(record, out_dir / f"{args.stem}.md")

    samples = args.preset.samples if args.quick else SAMPLES
    record["samples"] = samples
    if "stage1" not in record:
        record["stage1"] = stage1_scores(args)
        save()
    num_layers = len(record["stage1"]["layer_scores"]["mask-out"])
    evaluator = forgetting.Evaluator(args, dataclasses.replace(args.preset, samples=samples))
    for name, parity in (("even", 0), ("odd", 1)):
        if name in record["runs"]:
            continue
        layers = [i for i in range(num_layers) if i % 2 == parity]
        final = train_copies(args, name, layers)
        record["runs"][name] = {"layers": layers, **copy_skip(evaluator, final)}
        shutil.rmtree(final.parent, ignore_errors=True)
        save()
    record["correlations"] = correlations(record)
    save()
    print((out_dir / f"{args.stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
