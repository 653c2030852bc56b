"""The spectrum baseline: the top-SNR matrices of each kind train, nothing else, and it resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import adept_cpt
import torch
from safetensors.torch import load_file

from adept_components.config import asset_path
from adept_components.importance import module_snr, spectrum_selection
from adept_components.models import model_from_hf_config
from adept_components.models.convert_weights import hf_name

BASE = Path(asset_path("demo/base_model"))
COMMON = ["method=spectrum", "max_steps=4", "canary.every_n_steps=0", "save_every_n_steps=2"]


def run(out: Path, *overrides: str) -> None:
    assert adept_cpt.main(["--config", "tiny_demo", f"output_dir={out}", *COMMON, *overrides]) == 0


def test_spectrum_trains_the_top_snr_matrices_and_resumes_exactly(tmp_path: Path) -> None:
    run(tmp_path / "straight", "expansion.spectrum_fraction=0.25")
    model = model_from_hf_config(str(BASE))
    model.load_state_dict(_tune_state(BASE))  # the base, scored independently
    expected = {hf_name(n, "qwen3") for n in spectrum_selection(module_snr(model), 0.25)}
    assert len(expected) == 7 * 2  # 8 layers: the top 2 of each of the 7 kinds
    base, final = (
        load_file(str(BASE / "model.safetensors")),
        load_file(str(tmp_path / "straight" / "final" / "model.safetensors")),
    )
    changed = {k for k in base if not torch.equal(base[k], final[k])}
    assert changed == expected
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoints", resumed / "checkpoints")
    run(resumed, "expansion.spectrum_fraction=0.25", "resume_from_checkpoint=true")
    again = load_file(str(resumed / "final" / "model.safetensors"))
    assert all(torch.equal(final[k], again[k]) for k in final)


def _tune_state(directory: Path) -> dict[str, torch.Tensor]:
    from adept_components.checkpointing import HFCheckpointer

    return HFCheckpointer(str(directory), str(directory)).load_state_dict()
