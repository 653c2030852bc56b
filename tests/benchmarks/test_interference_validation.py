"""The copy-skip validation's statistics (``benchmarks/interference_validation.py``), without runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import common  # noqa: E402
import interference_validation as validation  # noqa: E402


def test_spearman_with_ties_and_its_interval() -> None:
    # Ranks of x: 1, 2, 3, 4, 5; of y (a tie at 2.0): 1, 2.5, 2.5, 4, 5.
    x, y = [0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 2.0, 2.0, 3.0, 9.0]
    # Pearson on ranks with ties: cov = 9.5, var_x = 10, var_y = 9.5.
    assert validation.spearman(x, y) == pytest.approx(9.5 / (10 * 9.5) ** 0.5)
    assert validation.spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    rho, low, high = validation.bootstrap_spearman(x, [v * v for v in x])
    assert rho == low == high == pytest.approx(1.0)  # monotone: every resample agrees


def test_the_difference_of_two_correlations_is_paired() -> None:
    x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    y = [v**3 for v in x]
    # The same predictor twice: every resample gives exactly zero.
    assert validation.bootstrap_spearman_difference(x, x, y) == (0.0, 0.0, 0.0)
    # Perfect against reversed: +1 - (-1) on the data and on every resample with two values.
    diff, low, high = validation.bootstrap_spearman_difference(x, [-v for v in x], y)
    assert diff == pytest.approx(2.0) and high == pytest.approx(2.0) and low <= high


def test_a_copys_effects_are_paired_differences() -> None:
    def docs(loss: float) -> list[list[float]]:
        return [[loss * 10, 10], [loss * 30, 30]]

    full = {"general_a": docs(2.0), "general_b": docs(3.0), "domain": docs(1.5)}
    skipped = {"general_a": docs(1.9), "general_b": docs(2.9), "domain": docs(1.7)}
    effect = validation._effect(full, skipped)
    assert effect["general_effect"] == pytest.approx(0.1)
    assert effect["domain_effect"] == pytest.approx(0.2)
    assert effect["interference"] == pytest.approx(0.5)
    hurts = {**skipped, "domain": docs(1.4)}  # the copy made the domain worse: no ratio
    assert validation._effect(full, hurts)["interference"] is None


def test_the_report_of_a_record_with_the_stage1_scores_only(tmp_path: Path) -> None:
    # The first part saves before any copy is trained: its report must not need the runs.
    scores = {p: [0.3, 0.1, 0.2, 0.4] for p in validation.PREDICTORS}
    record = {
        "model": "tiny",
        "domain": "maths",
        "lr": 1e-3,
        "setting": {"steps": 50, "batch_size": 4, "seq_len": 256},
        "provenance": [common.provenance(["interference_validation.py"])],
        "runs": {},
        "stage1": {
            "layer_scores": scores,
            "selected": {p: [1, 2] for p in scores},
            "seconds": {"mask-out": 12.5, "interference": 7.25},
        },
    }
    path = tmp_path / "report.md"
    validation.write_report(record, path)
    text = path.read_text()
    assert "| mask-out | 12.5 |" in text and "| interference | 7.2 |" in text
    assert "## Per copy (source layer)" in text
    record["samples"] = {"general": 32, "domain": 64}
    validation.write_report(record, path)
    assert "32 documents per general set, 64 of the domain" in path.read_text()


def test_the_report_gives_each_predictors_k_copies_their_measured_effects(tmp_path: Path) -> None:
    general = [0.05, 0.01, 0.03, 0.02, 0.04, 0.00]
    domain = [0.10, 0.05, 0.10, -0.01, 0.08, 0.02]

    def effect(s: int) -> dict:
        ratio = general[s] / domain[s] if domain[s] > 0 else None
        return {"general_effect": general[s], "domain_effect": domain[s], "interference": ratio}

    scores = {p: [6.0, 2.0, 4.0, 3.0, 5.0, 1.0] for p in validation.PREDICTORS}
    scores["rank"] = [1.0, 5.0, 3.0, 4.0, 2.0, 6.0]  # the reverse order of the general effect
    record = {
        "model": "tiny",
        "domain": "maths",
        "lr": 1e-3,
        "setting": {"steps": 50, "batch_size": 4, "seq_len": 256},
        "samples": {"general": 32, "domain": 64},
        "provenance": [common.provenance(["interference_validation.py"])],
        "runs": {
            "even": {"effects": {str(s): effect(s) for s in (0, 2, 4)}},
            "odd": {"effects": {str(s): effect(s) for s in (1, 3, 5)}},
        },
        "stage1": {
            "layer_scores": scores,
            "selected": {p: validation._lowest(v, 2) for p, v in scores.items()},
            "seconds": {"mask-out": 1.0},
        },
    }
    record["correlations"] = validation.correlations(record)
    assert record["correlations"]["mask-out"]["general_effect"][0] == pytest.approx(1.0)
    assert record["correlations"]["rank"]["general_effect"][0] == pytest.approx(-1.0)
    path = tmp_path / "report.md"
    validation.write_report(record, path)
    text = path.read_text()
    # mask-out's two lowest are layers 5 and 1: general (0.00 + 0.01) / 2, ratio (0 + 0.2) / 2.
    assert "| [1, 5] | +0.0050 | +0.1000 |" in text
    # rank's are 0 and 4: general (0.05 + 0.04) / 2, ratios 0.05 / 0.10 and 0.04 / 0.08.
    assert "| rank | -1.00 [-1.00, -1.00] |" in text and "| [0, 4] | +0.0450 | +0.5000 |" in text
    assert "| measured (best k) | | | [1, 5] | +0.0050 | +0.1000 |" in text
    # The data-free reference copies the two deepest layers: 4 and 5, ratios 0.5 and 0.
    assert f"| {validation.DEPTH} |" in text and "| [4, 5] | +0.0200 | +0.2500 |" in text
    # Against mask-out (rho +1): rank's rho is -1, so its difference is -2 on every resample
    # where the general effects differ.
    assert "| rank | -2.00 [" in text and "| interference | +0.00 [+0.00, +0.00] |" in text
    # Every position: the general mean of six; layer 3's ratio is missing (it hurt the domain).
    assert "| every position | | | | +0.0250 | — |" in text
    assert "| layer | general effect | domain effect | measured ratio | mask-out score |" in text
