"""Replay mixing and the forgetting gate, through the recipe on the tiny demo."""

from __future__ import annotations

import json
import re
from pathlib import Path

import adept_cpt
import pytest

from adept_components.config import asset_path

DOMAIN, GENERAL = asset_path("demo/domain.txt"), asset_path("demo/general.txt")
MIXTURE = [
    "dataset._component_=adept_components.data.mixed_text_dataset",
    "~dataset.source",
    f"+dataset.sources=[{{source: '{DOMAIN}', weight: 0.75}}, {{source: '{GENERAL}', weight: 0.25}}]",
]


def run(out: Path, *overrides: str) -> None:
    assert adept_cpt.main(["--config", "tiny_demo", f"output_dir={out}", *overrides]) == 0


def losses(out: Path) -> dict[int, float]:
    text = "".join(p.read_text() for p in sorted((out / "logs").glob("log_*.txt")))
    return {int(s): float(v) for s, v in re.findall(r"Step (\d+) \| loss:(\S+)", text)}


def test_a_replay_mixture_resumes_exactly_and_reports_its_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    common = [*MIXTURE, "method=llama_pro", "max_steps=6", "canary.every_n_steps=0",
              "save_every_n_steps=0"]  # fmt: skip
    with caplog.at_level("INFO", logger=adept_cpt.log.name):
        run(tmp_path / "straight", *common)
    mixture = re.search(r"Mixture per epoch: .*", caplog.text).group(0)
    assert "(75.0%, weight 0.75" in mixture or "(74.9%" in mixture or "(75.1%" in mixture, mixture
    read = re.search(r"Tokens read by source: (.*)", caplog.text).group(1)
    counts = [int(n.replace(",", "")) for n in re.findall(r" ([\d,]+) \(", read)]
    assert sum(counts) == 6 * 8 * 128  # 6 steps x batch 8 x 128 tokens
    assert 0.15 < counts[1] / sum(counts) < 0.35, read  # 48 chunks drawn at 25 %
    run(tmp_path / "resumed", *common, "stop_after_steps=3")
    run(tmp_path / "resumed", *common, "resume_from_checkpoint=true")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


@pytest.mark.parametrize(
    ("limit", "stops"), [("1e-9", True), ("100", False)], ids=["crossed", "below"]
)
def test_the_forgetting_gate_stops_a_run_that_crosses_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, limit: str, stops: bool
) -> None:
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger=adept_cpt.log.name):  # full CPT at a high lr forgets
        run(out, "method=full", "optimizer.lr=3e-3", "max_steps=6", "canary.every_n_steps=2",
            "save_every_n_steps=0", f"canary.gate_limit={limit}")  # fmt: skip
    history = json.loads((out / "canary.json").read_text())
    if not stops:
        assert (out / "final").is_dir() and [r["step"] for r in history] == [2, 4, 6]
        assert "forgetting_gate" not in json.loads((out / "retention.json").read_text())["metadata"]
        return
    first = history[0]
    increase = first["general_loss"] - first["general_base"]
    assert increase > 1e-9 and [r["step"] for r in history] == [2]
    assert (
        not (out / "final").exists() and (out / "checkpoints" / "step_2" / "resume.json").is_file()
    )
    assert f"Forgetting gate crossed at step 2: general loss {increase:+.4f} nats" in caplog.text
    gate = json.loads((out / "retention.json").read_text())["metadata"]["forgetting_gate"]
    assert gate.startswith("crossed at step 2: general loss +") and gate.endswith("stopped")
    assert "forgetting_gate" in (out / "retention.md").read_text()
    assert max(losses(out)) == 2


def test_a_gate_limit_must_be_positive(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        adept_cpt.main(["--config", "tiny_demo", f"output_dir={tmp_path / 'x'}",
                        "canary.gate_limit=-1"])  # fmt: skip
    assert "canary.gate_limit=-1 must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
