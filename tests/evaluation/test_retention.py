"""The retention report: exact numbers, file contents, pictures and atomic writes."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from adept_components.evaluation import (
    HeldOutComparison,
    retention,
    retention_from_canary,
    retention_report,
    write_retention_report,
)

# Losses exactly representable in binary, so deltas can be compared with ==.
GENERAL = (2.0, 2.5)
DOMAIN = (4.0, 3.0)
HISTORY = [
    {
        "step": 20,
        "general_loss": 2.125,
        "domain_loss": 3.75,
        "general_base": 2.0,
        "domain_base": 4.0,
    },
    {"step": 40, "general_loss": 2.25, "domain_loss": 3.5, "general_base": 2.0, "domain_base": 4.0},
    {"step": 60, "general_loss": 2.5, "domain_loss": 3.0, "general_base": 2.0, "domain_base": 4.0},
]


def report() -> retention.RetentionReport:
    return retention_report(*GENERAL, *DOMAIN, metadata={"step": 60}, num_tokens={"general": 7})


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_comparison_numbers_are_exact() -> None:
    c = HeldOutComparison("general", 2.0, 2.5)
    assert c.base_perplexity == math.exp(2.0)
    assert c.adapted_perplexity == math.exp(2.5)
    assert c.loss_delta == 0.5
    assert c.loss_delta_relative == 0.25
    assert c.perplexity_delta == math.exp(2.5) - math.exp(2.0)
    assert c.perplexity_delta_relative == pytest.approx(math.exp(0.5) - 1, rel=1e-12)
    improved = HeldOutComparison("domain", 4.0, 3.0)
    assert improved.loss_delta == -1.0 and improved.loss_delta_relative == -0.25
    assert HeldOutComparison("general", 0.0, 0.5).loss_delta_relative is None


def test_report_json_content() -> None:
    assert report().to_json() == {
        "general": {
            "base_loss": 2.0,
            "adapted_loss": 2.5,
            "loss_delta": 0.5,
            "loss_delta_relative": 0.25,
            "base_perplexity": math.exp(2.0),
            "adapted_perplexity": math.exp(2.5),
            "perplexity_delta": math.exp(2.5) - math.exp(2.0),
            "perplexity_delta_relative": (math.exp(2.5) - math.exp(2.0)) / math.exp(2.0),
            "num_tokens": 7,
        },
        "domain": {
            "base_loss": 4.0,
            "adapted_loss": 3.0,
            "loss_delta": -1.0,
            "loss_delta_relative": -0.25,
            "base_perplexity": math.exp(4.0),
            "adapted_perplexity": math.exp(3.0),
            "perplexity_delta": math.exp(3.0) - math.exp(4.0),
            "perplexity_delta_relative": (math.exp(3.0) - math.exp(4.0)) / math.exp(4.0),
            "num_tokens": None,
        },
        "metadata": {"step": 60},
    }


def test_markdown_table_rows() -> None:
    text = report().to_markdown()
    # exp(2) = 7.389, exp(2.5) = 12.182; exp(4) = 54.598, exp(3) = 20.086
    assert (
        "| general | 2.0000 | 2.5000 | +0.5000 | +25.00% | 7.389 | 12.182 | +4.793 | +64.87% |"
        in text
    )
    assert (
        "| domain | 4.0000 | 3.0000 | -1.0000 | -25.00% | 54.598 | 20.086 | -34.513 | -63.21% |"
        in text
    )
    assert "- step: `60`" in text


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (float("nan"), "finite and >= 0"),
        (float("inf"), "finite and >= 0"),
        (-0.1, "finite and >= 0"),
        ("2.0", "must be a number"),
        (800.0, "too large for a perplexity"),
    ],
)
def test_bad_losses_are_refused(loss: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retention_report(2.0, loss, 4.0, 3.0)


def test_write_report_files(tmp_path: Path) -> None:
    written = write_retention_report(tmp_path / "out", report(), HISTORY)
    assert {k: p.name for k, p in written.items()} == {
        "json": "retention.json",
        "markdown": "retention.md",
        "chart": "retention.png",
        "canary": "canary.png",
    }
    assert json.loads(written["json"].read_text()) == report().to_json()
    assert written["markdown"].read_text() == report().to_markdown()
    assert png_size(written["chart"]) == (1080, 480)  # 9 x 4 in at 120 dpi
    assert png_size(written["canary"]) == (900, 672)  # 7.5 x 5.6 in at 120 dpi
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in written.values()
    )  # no temporary file left behind


def test_standalone_report_has_no_canary_picture(tmp_path: Path) -> None:
    written = write_retention_report(tmp_path, report())
    assert set(written) == {"json", "markdown", "chart"}
    assert not (tmp_path / "canary.png").exists()


def test_pictures_draw_both_sets_in_their_colours(tmp_path: Path) -> None:
    written = write_retention_report(tmp_path, report(), HISTORY)
    canary = imread(written["canary"])[..., :3]  # [h, w, rgb] in [0, 1]
    chart = imread(written["chart"])[..., :3]

    def has(image: np.ndarray, hex_colour: str) -> bool:
        rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        return bool((np.abs(image - rgb).max(axis=-1) < 0.02).sum() > 200)

    assert has(canary, "#1f77b4") and has(canary, "#d62728")  # general and domain curves
    assert has(chart, "#9e9e9e") and has(chart, "#1f77b4")  # base and adapted bars


def test_a_failed_write_leaves_the_previous_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_retention_report(tmp_path, report())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(retention, "plot_canary", broken)
    changed = retention_report(3.0, 3.0, 3.0, 3.0)
    with pytest.raises(OSError, match="disk full"):
        write_retention_report(tmp_path, changed, HISTORY)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_retention_from_canary_uses_the_last_record(tmp_path: Path) -> None:
    result = retention_from_canary(HISTORY, tmp_path)
    assert result["general"]["base_loss"] == 2.0 and result["general"]["adapted_loss"] == 2.5
    assert result["domain"]["base_loss"] == 4.0 and result["domain"]["adapted_loss"] == 3.0
    assert result["general"]["loss_delta"] == 0.5 and result["domain"]["loss_delta"] == -1.0
    assert result["metadata"] == {"source": "canary", "step": 60}
    assert json.loads((tmp_path / "retention.json").read_text()) == result
    assert {p.name for p in tmp_path.iterdir()} == {
        "retention.json",
        "retention.md",
        "retention.png",
        "canary.png",
    }


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ([], "canary history is empty"),
        ([{"step": 1, "general_loss": 2.0}], r"canary record 0 lacks \['domain_loss'"),
        ([{**HISTORY[0], "domain_loss": float("nan")}], r"step 20\): \['domain_loss'\] not finite"),
    ],
)
def test_bad_canary_history_writes_nothing(tmp_path: Path, history: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retention_from_canary(history, tmp_path / "out")
    assert not (tmp_path / "out").exists()
