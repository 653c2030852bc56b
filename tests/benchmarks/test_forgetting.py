"""The forgetting benchmark's plan and statistics (``benchmarks/forgetting.py``), without runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import forgetting  # noqa: E402


def fake(run: forgetting.RunSpec, gain: float, general: float) -> dict:
    return {"name": run.name, "line": run.line, "lr": run.lr, "seed": run.seed,
            "method": run.method, "domain_gain": gain, "general_increase": general}  # fmt: skip


def test_paired_bootstrap_measures_a_shift_on_the_same_documents() -> None:
    docs = [[float(i % 7 + 1) * 10, 10] for i in range(40)]  # [summed loss, tokens]
    same = forgetting.paired_bootstrap([docs], [docs])
    assert same == (0.0, 0.0, 0.0)
    shifted = [[loss + 0.5 * tokens, tokens] for loss, tokens in docs]
    diff, low, high = forgetting.paired_bootstrap([shifted, shifted], [docs, docs])
    assert diff == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)
    noisy = [
        [loss + (1 if i % 2 else -1) * tokens, tokens] for i, (loss, tokens) in enumerate(docs)
    ]
    diff, low, high = forgetting.paired_bootstrap([noisy], [docs])
    assert diff == pytest.approx(0.0) and low < 0 < high  # zero mean: no claimed difference


def test_the_general_interval_is_the_mean_of_the_sets_differences() -> None:
    wiki = [[float(i % 5 + 1) * 10, 10] for i in range(30)]
    speech = [[float(i % 3 + 2) * 20, 20] for i in range(50)]
    up = lambda docs, shift: [[loss + shift * tokens, tokens] for loss, tokens in docs]  # noqa: E731
    diff, low, high = forgetting.paired_bootstrap_sets(
        [([up(wiki, 0.5)], [wiki]), ([up(speech, 0.1)], [speech])]
    )
    assert (diff, low, high) == pytest.approx((0.3, 0.3, 0.3))

    # Against ADEPT's point with seeds: every other point with the same seeds, per set and
    # for the general mean; ADEPT's other rates (one seed) have no interval.
    def run(line: str, lr: float, seed: int, shift: float) -> dict:
        docs = {"wiki": up(wiki, shift), "speech": up(speech, 2 * shift), "domain": wiki}
        return {"line": line, "lr": lr, "seed": seed, "doc_losses": docs}

    runs = {f"{line}{lr}{s}": run(line, lr, s, shift)
            for line, lr, shift in (("adept", 3e-3, 0.0), ("full", 1e-5, -0.1))
            for s in (0, 1)}  # fmt: skip
    runs["adept_lone"] = run("adept", 1e-3, 0, 0.0)
    rows = {(r["line"], r["set"]): r for r in forgetting.intervals(runs, "adept")}
    assert set(rows) == {("full", "wiki"), ("full", "speech"), ("full", "domain"),
                         ("full", "general")}  # fmt: skip
    assert rows["full", "general"]["diff"] == pytest.approx(-0.15)
    assert rows["full", "domain"]["diff"] == 0.0
    assert rows["full", "wiki"]["reference"] == "adept lr 0.003"
    assert rows["full", "wiki"]["seeds"] == [0, 1]


def test_the_plan_sweeps_first_then_the_decisive_seeds_then_the_lines_near_adept() -> None:
    preset = forgetting.PRESETS["gemma3"]
    args = forgetting.parse_args(["--model", "gemma3", "--domain", "medical"])
    first = forgetting.plan(preset, "medical", {}, args)
    assert [r.name for r in first] == [
        "full_lr3e-06", "full_lr1e-05", "full_lr3e-05", "full_lr0.0001",
        "adept_lr0.0001", "adept_lr0.0003", "adept_lr0.001", "adept_lr0.003", "adept_lr0.01",
        "lora_lr0.0001", "lora_lr0.0003", "lora_lr0.001",
    ]  # fmt: skip
    # full at 1e-4 gains less than at 3e-5 and forgets more: off full's frontier, so the
    # gain-matched rate is 1e-5 (0.4), not 1e-4 (0.46, the closest gain overall).
    gains = {
        "full": (0.2, 0.4, 0.6, 0.46),
        "adept": (0.3, 0.45, 0.5, 0.5, 0.5),
        "lora": (0.1, 0.2, 0.3),
    }
    forgets = {
        "full": (0.0, 0.01, 0.05, 0.2),
        "adept": (0.0, 0.01, 0.2, 0.3, 0.4),
        "lora": (0.0, 0.0, 0.05),
    }
    runs = {}
    for run in first:
        i = preset.sweeps["medical"][run.line].index(run.lr)
        runs[run.name] = fake(run, gains[run.line][i], forgets[run.line][i])
    later = [r for r in forgetting.plan(preset, "medical", runs, args) if r.name not in runs]
    # ADEPT's best rate (gain - general: 0.44 at 3e-4); full's frontier gain closest: 1e-5.
    # LLaMA-Pro, then the decisive points' seeds (the verdict rests on them), then stage 1 by
    # interference per seed, then the lines that widen the picture, in the preset's order.
    assert [r.name for r in later] == [
        "llama_pro_lr0.0003",
        "adept_lr0.0003_s1", "full_lr1e-05_s1", "llama_pro_lr0.0003_s1", "lora_lr0.001_s1",
        "adept_lr0.0003_s2", "full_lr1e-05_s2", "llama_pro_lr0.0003_s2", "lora_lr0.001_s2",
        "adept+interference_lr0.0003", "adept+interference_lr0.0003_s1",
        "adept+interference_lr0.0003_s2",
        "random_lr0.0003", "random_lr0.0003_s1", "random_lr0.0003_s2",
        "adept+rank_lr0.0003", "spectrum_lr3e-05", "spectrum_lr0.0001",
        "adept+replay_lr0.0003", "full+replay_lr1e-05",
    ]  # fmt: skip
    replay = next(r for r in later if r.line == "adept+replay")
    assert "+dataset.sources=" in replay.overrides[-1] and "weight: 0.1" in replay.overrides[-1]
    assert not next(r for r in later if r.line == "adept+rank").profile  # probes by rank
    interference = [r for r in later if r.line == "adept+interference"]
    assert all(not r.profile and r.overrides == forgetting.INTERFERENCE for r in interference)
    assert [r.seed for r in interference] == [0, 1, 2]


def test_equal_gain_reads_full_cpts_frontier_not_its_dominated_rates() -> None:
    """Gemma 3's full line on seed 0: lr 1e-4 gains less than 1e-5 and forgets more."""
    full = [forgetting.spec("full", "full", lr) for lr in (1e-5, 3e-5, 1e-4)]
    runs = {
        r.name: fake(r, gain, general)
        for r, gain, general in zip(
            full, (0.9316, 1.0227, 0.8780), (-0.0384, 0.0119, 0.2187), strict=True
        )
    }
    assert [r["lr"] for r in forgetting.pareto(list(runs.values()))] == [1e-5, 3e-5]
    adept = forgetting.spec("adept", "adept", 1e-3)
    runs[adept.name] = fake(adept, 0.95, 0.0)
    lines = forgetting.verdict_lines(runs)
    # On the frontier, gain 0.95 lies between 1e-5 and 3e-5: -0.0384 + 0.202 x 0.0503
    # (t = 0.0184 / 0.0911); 3e-5, the only run gaining as much, forgets more.
    assert (
        "- adept_lr0.001 (gain +0.9500, general +0.0000): frontier -0.0282 (+0.0282); not "
        "dominated: full lr 3e-05 (gain +1.0227, general +0.0119)" in lines
    ), lines
    runs[adept.name] = fake(adept, 0.82, 0.0103)  # below the frontier's gains (1e-4 is off it)
    assert (
        "- adept_lr0.001 (gain +0.8200, general +0.0103): outside the frontier's gains; "
        "dominated by full lr 1e-05 (gain +0.9316, general -0.0384)"
        in forgetting.verdict_lines(runs)
    )
    runs[adept.name] = fake(adept, 1.1, 0.0)
    assert (
        "- adept_lr0.001 (gain +1.1000, general +0.0000): outside the frontier's gains; "
        "gains more than every full-CPT run" in forgetting.verdict_lines(runs)
    )


def test_chosen_points_replace_the_sweep() -> None:
    """``--sweep`` and ``--near``: a record of chosen rates and lines only."""
    args = forgetting.parse_args(
        ["--model", "smollm2", "--domain", "medical", "--sweep", "adept=3e-3",
         "--sweep", "full=1e-4", "--near", "llama_pro,interference"]
    )  # fmt: skip
    preset = args.preset
    first = forgetting.plan(preset, "medical", {}, args)
    assert [r.name for r in first] == ["full_lr0.0001", "adept_lr0.003", "lora_lr0.0001",
                                       "lora_lr0.0003", "lora_lr0.001"]  # fmt: skip
    args = forgetting.parse_args(["--model", "smollm2", "--sweep", "lora=", "--near", ""])
    assert [r.name for r in forgetting.plan(args.preset, "medical", {}, args)][-1] == (
        "adept_lr0.003"
    )
    # A second domain with one seed: the sweeps and LLaMA-Pro only.
    args = forgetting.parse_args(
        ["--model", "gemma3", "--domain", "maths", "--near", "llama_pro", "--seeds", "0"]
    )
    runs = {}
    for run in forgetting.plan(args.preset, "maths", {}, args):
        runs[run.name] = fake(run, 0.5 if run.line == "adept" else 0.4, 0.01)
    later = [
        r.name for r in forgetting.plan(args.preset, "maths", runs, args) if r.name not in runs
    ]
    assert later == ["llama_pro_lr0.001"]
    for bad in ("1,2", "0,0", "0,x"):
        with pytest.raises(SystemExit):
            forgetting.parse_args(["--model", "gemma3", "--seeds", bad])
    with pytest.raises(SystemExit):
        forgetting.parse_args(["--model", "smollm2", "--near", "magic"])
    with pytest.raises(SystemExit):
        forgetting.parse_args(["--model", "smollm2", "--sweep", "adept"])


def test_a_former_record_converts_with_its_numbers() -> None:
    old = {
        "command": "python benchmarks/forgetting_smollm2.py",
        "setting": {"steps": 100, "batch_size": 4, "seq_len": 256},
        "base": {"general_wiki": 2.8, "general_speech": 3.2, "domain": 4.0},
        "runs": {"adept_lr0.001": {
            "name": "adept_lr0.001", "method": "adept", "lr": 1e-3, "variant": "adept (sepnorm)",
            "general_increase_wiki": 0.02, "general_increase_speech": 0.04, "domain_gain": 0.5,
            "losses": {"general_wiki": 2.82, "general_speech": 3.24, "domain": 3.5},
            "trainable": 10, "total": 100, "wall_s": 1.0}},
    }  # fmt: skip
    new = forgetting.convert_legacy(old, "smollm2", "medical")
    run = new["runs"]["adept_lr0.001"]
    assert run["line"] == "adept+sepnorm" and run["seed"] == 0
    assert run["deltas"] == {"general_wiki": 0.02, "general_speech": 0.04, "domain": -0.5}
    assert run["general_increase"] == pytest.approx(0.03) and run["domain_gain"] == 0.5
    assert new["setting"]["tokens"] == 102_400 and new["format"] == forgetting.FORMAT
