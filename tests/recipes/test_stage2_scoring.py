"""unit_tuning.scoring and units through the recipe: per-kind scales span [0, 2] in every kind,
conflict scores drive the scales, rows as units train and resume exactly."""

from __future__ import annotations

import re
from pathlib import Path

import adept_cpt
import pytest


def scales(out: Path) -> dict[int, dict[str, float]]:
    text = "".join(p.read_text() for p in sorted((out / "logs").glob("log_*.txt")))
    found: dict[int, dict[str, float]] = {}
    for step, line in re.findall(r"Step (\d+) \| (.*scale/.*)", text):
        found[int(step)] = {k: float(v) for k, v in re.findall(r"scale/(\S+):(\S+)", line)}
    return found


@pytest.mark.parametrize("scoring", ["per_kind", "conflict"])
def test_scoring_variants_set_the_unit_scales(tmp_path: Path, scoring: str) -> None:
    out = tmp_path / scoring
    argv = ["--config", "tiny_demo", f"output_dir={out}", "max_steps=3", "canary.every_n_steps=0",
            "save_every_n_steps=0", "unit_tuning.refresh_every=2", f"unit_tuning.scoring={scoring}",
            "expansion.layers=[3,7]"]  # no stage-1 probe: these tests are about stage 2  # fmt: skip
    assert adept_cpt.main(argv) == 0
    logged = scales(out)
    assert sorted(logged) == [2]  # refreshed at step 2
    values = logged[2]
    assert all(0.0 <= w <= 2.0 for w in values.values())
    kinds = {re.sub(r"^layers\.\d+\.", "", name) for name in values}
    assert len(values) == 2 * len(kinds)  # two copies in the demo
    if scoring == "per_kind":  # two units per kind: one at 2, one at 0
        for kind in kinds:
            assert sorted(w for n, w in values.items() if n.endswith(kind)) == [0.0, 2.0], kind
    else:
        assert min(values.values()) == 0.0 and max(values.values()) == 2.0


def losses(out: Path) -> dict[int, float]:
    text = "".join(p.read_text() for p in sorted((out / "logs").glob("log_*.txt")))
    return {int(s): float(v) for s, v in re.findall(r"Step (\d+) \| loss:(\S+)", text)}


def test_row_units_train_and_resume_exactly(tmp_path: Path) -> None:
    """units=rows: the row scales travel in the resume checkpoint; 4 straight == 2 + 2."""
    common = ["--config", "tiny_demo", "max_steps=4", "canary.every_n_steps=0",
              "save_every_n_steps=0", "unit_tuning.refresh_every=2", "unit_tuning.units=rows",
              "expansion.layers=[3,7]"]  # fmt: skip
    assert adept_cpt.main([*common, f"output_dir={tmp_path / 'straight'}"]) == 0
    logged = scales(tmp_path / "straight")
    assert sorted(logged) == [2]  # per tensor, the mean of its row scales
    assert all(0.0 <= w <= 2.0 for w in logged[2].values())
    assert any(0.0 < w < 2.0 for w in logged[2].values())  # rows spread inside a tensor
    resumed = [*common, f"output_dir={tmp_path / 'resumed'}"]
    assert adept_cpt.main([*resumed, "stop_after_steps=2"]) == 0
    assert adept_cpt.main([*resumed, "resume_from_checkpoint=true"]) == 0
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
