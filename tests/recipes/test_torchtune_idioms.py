"""What a torchtune user reaches for at scale, through the recipe on the tiny demo:
checkpoint retention with resume, one random seed for all ranks, and the metrics torchtune's
recipes log (``grad_norm``, peak memory, ``tokens_per_second_per_gpu``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import adept_cpt
import pytest
import torch
from conftest import tune_run
from test_adept_cpt import hf_tensors, losses, run

QUIET = ["save_every_n_steps=0", "canary.every_n_steps=0", "unit_tuning.refresh_every=2"]


def steps_kept(out: Path) -> list[str]:
    """Every entry of ``checkpoints/``, hidden ones too (nothing half-removed may stay)."""
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_keep_last_n_checkpoints_with_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Saves at 2, 4 (stop), resume, 6, final at 8, keeping 1: each older step_N goes only
    after the newer one is complete, and the resume finds the newest."""
    out = tmp_path / "keep"
    common = [
        "max_steps=8",
        "save_every_n_steps=2",
        "keep_last_n_checkpoints=1",
        "canary.every_n_steps=0",
        "unit_tuning.refresh_every=2",
        "expansion.layers=[3,5]",
    ]
    with caplog.at_level("INFO", logger=adept_cpt.log.name):
        run(out, *common, "stop_after_steps=4")
    assert steps_kept(out) == ["step_4"]
    assert "Removed" in caplog.text and "step_2 (keep_last_n_checkpoints=1)" in caplog.text
    run(out, *common, "resume_from_checkpoint=true")
    assert steps_kept(out) == ["step_6"]
    assert sorted(losses(out)) == list(range(1, 9))
    run(tmp_path / "all", *common[:2], "keep_last_n_checkpoints=null", *common[3:])
    assert steps_kept(tmp_path / "all") == ["step_2", "step_4", "step_6"]
    kept, straight = losses(out), losses(tmp_path / "all")
    assert all(abs(kept[s] - straight[s]) <= 1e-6 for s in straight)  # the resume was exact


def test_grad_norm_peak_memory_and_per_gpu_throughput(tmp_path: Path) -> None:
    """``clip_grad_norm=inf`` logs the norm and changes nothing: the losses equal a run
    without clipping; ``log_peak_memory_stats`` adds the peak on every line."""
    common = ["max_steps=3", "expansion.layers=[3,5]", *QUIET]
    run(tmp_path / "inf", *common, "clip_grad_norm=inf", "log_peak_memory_stats=true")
    run(tmp_path / "none", *common, "clip_grad_norm=null")
    norms = losses(tmp_path / "inf", "grad_norm")
    assert sorted(norms) == [1, 2, 3] and all(0 < n < math.inf for n in norms.values())
    assert not losses(tmp_path / "none", "grad_norm")  # nothing measured, nothing logged
    assert losses(tmp_path / "inf") == losses(tmp_path / "none")
    peaks = losses(tmp_path / "inf", "peak_memory_rss")
    assert sorted(peaks) == [1, 2, 3] and all(0.05 < p < 64 for p in peaks.values())  # GiB
    rates = losses(tmp_path / "inf", "tokens_per_second_per_gpu")
    assert sorted(rates) == [1, 2, 3] and all(r > 0 for r in rates.values())
    log = next((tmp_path / "none" / "logs").glob("log_*.txt")).read_text()
    assert "peak_memory" not in log and "tokens_per_second:" not in log


def test_two_ranks_with_a_null_seed_share_rank_zeros_seed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``seed=None`` under torchrun: every rank draws a seed, rank 0's is kept. With
    ``method=random`` a rank of its own seed would copy other layers and read other chunks;
    the two ranks instead equal one process run with the logged seed and two micro-batches."""
    common = ["method=random", "max_steps=3", "batch_size=4", *QUIET]
    two = ["--nproc_per_node", "2", "adept_cpt", "--config", "tiny_demo"]
    cache = f"dataset.cache_dir={tmp_path / 'cache'}"
    result = tune_run(
        [*two, f"output_dir={tmp_path / 'two'}", cache, "seed=None", *common], tmp_path
    )
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    seed = int(re.search(r"seed=null: random seed (\d+)", log)[1])
    layers = re.search(r"Selected layers (\[[\d, ]+\])", log)[1]
    with caplog.at_level("INFO", logger=adept_cpt.log.name):
        run(tmp_path / "one", f"seed={seed}", "gradient_accumulation_steps=2", *common)
    assert f"Selected layers {layers}" in caplog.text
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    assert all(abs(one[s] - two[s]) <= 1e-4 * abs(one[s]) for s in one), (one, two)
    a, b = hf_tensors(tmp_path / "one" / "final"), hf_tensors(tmp_path / "two" / "final")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=2e-5) for k in a)
