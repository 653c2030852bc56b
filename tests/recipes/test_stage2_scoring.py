"""unit_tuning.scoring through the recipe: per-kind scales span [0, 2] in every kind; conflict
scores drive the scales."""

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
    argv = ["--config", "tiny_demo", f"output_dir={out}", "max_steps=4", "canary.every_n_steps=0",
            "save_every_n_steps=0", "unit_tuning.refresh_every=2", f"unit_tuning.scoring={scoring}"]  # fmt: skip
    assert adept_cpt.main(argv) == 0
    logged = scales(out)
    assert sorted(logged) == [2]  # refreshed at step 2 (step 4 is the last)
    values = logged[2]
    assert all(0.0 <= w <= 2.0 for w in values.values())
    kinds = {re.sub(r"^layers\.\d+\.", "", name) for name in values}
    assert len(values) == 2 * len(kinds)  # two copies in the demo
    if scoring == "per_kind":  # two units per kind: one at 2, one at 0
        for kind in kinds:
            assert sorted(w for n, w in values.items() if n.endswith(kind)) == [0.0, 2.0], kind
    else:
        assert min(values.values()) == 0.0 and max(values.values()) == 2.0
