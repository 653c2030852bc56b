"""The GPU check (``benchmarks/gpu_check.py``): its model, its refusals and, end to end, its
CPU path, so that the script a GPU machine runs cannot rot where no GPU is."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import common  # noqa: E402
import gpu_check  # noqa: E402

from adept_components.config import asset_path  # noqa: E402
from adept_components.models import qwen3_0_6b  # noqa: E402
from adept_components.models.architecture import ModelArchitecture  # noqa: E402

RUNS = ("adept_bf16", "full_bf16", "adept_fp32", "full_fp32")


def test_the_gpu_model_has_qwen3_0_6b_shapes() -> None:
    """The config.json numbers build exactly the parameters of ``qwen3_0_6b``."""
    with torch.device("meta"):
        ours = ModelArchitecture.from_hf_config(gpu_check.QWEN3_0_6B).build(64)
        published = qwen3_0_6b(max_seq_len=64)
    shapes = {name: p.shape for name, p in ours.named_parameters()}
    assert shapes == {name: p.shape for name, p in published.named_parameters()}
    assert sum(p.numel() for p in ours.parameters()) == 596_049_920  # HF Qwen/Qwen3-0.6B


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_without_transformers_the_builder_writes_the_same_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers' ``Qwen3ForCausalLM`` and the fallback (a GPU machine without
    transformers) write the same tensor names, shapes and dtype, initialised alike."""
    demo = Path(asset_path("demo/base_model"))
    files = [demo / name for name in ("vocab.json", "merges.txt", "tokenizer.json")]
    config = {**gpu_check.TINY, "bos_token_id": None, "eos_token_id": 2043}
    written = gpu_check.write_random_qwen3(tmp_path / "hf", config, files)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    fallback = gpu_check.write_random_qwen3(tmp_path / "own", config, files)
    assert written.startswith("transformers ") and "not installed" in fallback
    hf, own = _tensors(tmp_path / "hf"), _tensors(tmp_path / "own")
    assert {k: (v.shape, v.dtype) for k, v in hf.items()} == {
        k: (v.shape, v.dtype) for k, v in own.items()
    }
    assert "lm_head.weight" not in own  # tied
    for name in hf:
        for tensors in (hf, own):
            value = tensors[name].float()
            if name.endswith("norm.weight"):
                assert torch.equal(value, torch.ones_like(value)), name
            else:
                assert abs(value.std().item() - gpu_check.INIT_STD) < 0.002, name
    for directory in ("hf", "own"):
        read = ModelArchitecture.from_hf_config(
            json.loads((tmp_path / directory / "config.json").read_text())
        )
        assert read == ModelArchitecture.from_hf_config(config)
        marker = json.loads((tmp_path / directory / gpu_check.MARKER).read_text())
        assert marker["init_std"] == gpu_check.INIT_STD
        assert {p.name for p in files} <= {p.name for p in (tmp_path / directory).iterdir()}


def test_peak_tflops_from_the_gpu_name() -> None:
    def peak(name: str | None, given: float | None = None) -> float | None:
        return gpu_check.gpu_peak(argparse.Namespace(peak_tflops=given), name)[0]

    assert peak("NVIDIA H100 80GB HBM3") == 989.0
    assert peak("NVIDIA H100 PCIe") == 756.0
    assert peak("NVIDIA H100 NVL") == 835.0
    assert peak("NVIDIA H200") == 989.0
    assert peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("NVIDIA GeForce RTX 4090") is None  # unknown: --peak-tflops, or no MFU
    assert peak(None) is None
    assert peak("NVIDIA H200", given=500.0) == 500.0


def test_without_the_tune_launcher_the_recipe_module_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tune run adept_cpt`` runs the module ``adept_cpt``; where the launcher cannot be
    imported (no kagglehub), the check runs that module itself."""
    assert gpu_check.launcher()[1:] == ["-m", "torchtune._cli.tune", "run", "adept_cpt"]
    monkeypatch.setitem(sys.modules, "torchtune._cli.tune", None)
    assert gpu_check.launcher() == [sys.executable, "-m", "adept_cpt"]


def test_refusals_are_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cpu", "--tiny", "--compare-steps", "4"])
    assert "--compare-steps 4 exceeds the bf16 runs' 3 steps" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="torch sees no GPU; the CPU path is --device cpu"):
            gpu_check.parse_args([])


def test_runs_checkpoint_only_where_the_plan_does_not_fit(tmp_path: Path) -> None:
    """Activation checkpointing goes on when the planned peak exceeds ``--fit`` of the GPU."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()  # the planner reads config.json alone
    (model_dir / "config.json").write_text(json.dumps(gpu_check.TINY))
    preset, spec = gpu_check.PRESETS["tiny"], gpu_check.RunSpec("full", "fp32", 3)

    def plan(gpu_memory: float | None) -> tuple[list[str], dict]:
        args = argparse.Namespace(device="cpu", gpu_memory=gpu_memory, fit=0.8)
        return gpu_check.plan_run(spec, preset, args, model_dir, tmp_path / "out")

    roomy = plan(None)  # no limit (a CPU)
    assert "enable_activation_checkpointing=false" in roomy[0]
    tight = plan(0.9 * roomy[1]["peak_gib"] / 0.8)  # a GPU 10% too small at --fit 0.8
    assert "enable_activation_checkpointing=true" in tight[0]
    assert tight[1]["peak_gib"] < 0.9 * roomy[1]["peak_gib"]
    assert tight[1]["recompute_flops_per_step"] > roomy[1]["recompute_flops_per_step"]


def _logged(step: int, alloc: float) -> dict[str, float]:
    """One CUDA training line as the recipe logs it."""
    return {"step": step, "loss": 12.0 + 0.001 * step, "grad_norm": 2.0,
            "tokens_per_second_per_gpu": 1000.0 * step, "peak_memory_alloc": alloc,
            "peak_memory_reserved": alloc + 1, "peak_memory_active": alloc}  # fmt: skip


def _finished(peaks: list[float], planned: float, steps: int = 3) -> dict:
    planner = {"peak_gib": planned, "flops_per_step": 4e12, "recompute_flops_per_step": 1e12,
               "flops_per_token": 1e9, "trainable_params": 5, "total_params": 10}  # fmt: skip
    return {"spec": {}, "overrides": [], "activation_checkpointing": False, "wall_s": 1.0,
            "planner": planner, "trainable_params": 5, "total_params": 10,
            "trained_layers": None,
            "steps": [_logged(i + 1, peaks[i]) for i in range(steps)]}  # fmt: skip


def test_cuda_peaks_mfu_and_failures_on_logged_values() -> None:
    """The GPU-only analysis on made-up CUDA logs: the peak of steps 2+ against the plan
    (step 1 holds the checkpoint load), MFU from the planner's FLOPs, a failed run reported."""
    preset = gpu_check.dataclasses.replace(
        gpu_check.PRESETS["tiny"], warmup_steps=1, timed_steps=2, compare_steps=2
    )
    runs = {
        "adept_bf16": _finished([30.0, 10.5, 11.0], planned=10.0),  # x1.10: passes
        "full_bf16": _finished([30.0, 13.0, 12.0], planned=10.0),  # x1.30: fails
        "adept_fp32": {
            **_finished([], planned=10.0, steps=0),
            "steps": None,
            "error": "torch.OutOfMemoryError: CUDA out of memory.",
        },  # fmt: skip
        "full_fp32": _finished([9.0, 9.0], planned=10.0, steps=2),
    }
    runs["full_fp32"]["steps"][0]["loss"] += 0.5  # beyond the 1% tolerance
    analysis, checks = gpu_check.analyse(runs, preset, "cuda", 1.0)
    memory = analysis["memory"]
    assert memory["adept_bf16"]["measured_gib"] == 11.0 and memory["adept_bf16"]["step1_gib"] == 30
    assert memory["adept_bf16"]["ratio"] == pytest.approx(1.1) and memory["adept_bf16"]["passed"]
    assert memory["full_bf16"]["passed"] is False
    speed = analysis["throughput"]["adept"]
    assert speed["tokens_per_s"] == 2500.0  # median of steps 2 and 3
    step_s = preset.batch_size * (preset.seq_len - 1) / 2500.0
    assert speed["mfu"] == pytest.approx(4e12 / step_s / 1e12)
    assert speed["hfu"] == pytest.approx(5e12 / step_s / 1e12)
    assert list(analysis["precision"]) == ["full"]  # ADEPT's fp32 run failed
    assert analysis["precision"]["full"]["loss_passed"] is False
    failed = {c["name"] for c in checks if c["passed"] is False}
    assert failed == {
        "adept_fp32 finished",
        "full_bf16: peak memory",
        "full: bf16 losses match fp32",
    }
    result = {
        "settings": {"batch_size": preset.batch_size, "seq_len": preset.seq_len},
        "model": {"name": "m", "params": 10, "written_by": "w"},
        "device_name": "NVIDIA H100 80GB HBM3", "peak_tflops": 1.0,
        "peak_tflops_source": "--peak-tflops", "runs": runs, **analysis, "checks": checks,
    }  # fmt: skip
    report = gpu_check.render(result)
    assert "| adept_fp32 | failed: torch.OutOfMemoryError: CUDA out of memory. |" in report
    assert "11.00 GiB (10.00 GiB) | 1.100 |" in report
    assert (
        "- FAIL: full_bf16: peak memory: measured 13.00 GiB vs planned 10.00 GiB (x1.300" in report
    )


@pytest.mark.slow
def test_cpu_path_end_to_end(tmp_path: Path) -> None:
    """``gpu_check.py --device cpu --tiny``: four ``tune run`` processes, their logs read
    back, the planner beside each, bf16 against fp32, MFU against a nominal peak."""
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--tiny",
         "--peak-tflops", "0.001", "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "All checks passed" in done.stdout and "| adept_bf16 | off |" in done.stdout
    result = json.loads(out.read_text())

    assert result["provenance"]["command"].startswith("python benchmarks/gpu_check.py")
    assert result["device"] == "cpu" and result["model"]["written_by"].startswith("transformers")
    config = result["model"]["config"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        4,
        64,
        2048,
    )
    preset = gpu_check.PRESETS["tiny"]
    b, s = preset.batch_size, preset.seq_len
    runs = result["runs"]
    assert list(runs) == list(RUNS)
    for name, run in runs.items():
        assert [line["step"] for line in run["steps"]] == [1, 2, 3], name
        for line in run["steps"]:
            assert math.isfinite(line["loss"]) and 0 < line["grad_norm"] < math.inf
            assert line["tokens_per_second_per_gpu"] > 0 and line["peak_memory_rss"] > 0
        # Random N(0, 0.02) weights, tied head: logits ~ N(0, 0.02^2 * 64) over 2,048 ids,
        # so the first loss is ln(2048) + 0.16^2 / 2 (expected log-sum-exp of small logits).
        assert abs(run["steps"][0]["loss"] - (math.log(2048) + 0.0128)) < 0.05, name
        planner = run["planner"]
        assert (planner["trainable_params"], planner["total_params"]) == (
            run["trainable_params"],
            run["total_params"],
        )
        assert planner["peak_gib"] > 0 and planner["flops_per_step"] > 0
        assert f"dtype={name.split('_')[1]}" in run["overrides"]

    # ADEPT copies layers 2 and 3 (positions 3 and 5 of 6); the planner sized the same.
    for name in ("adept_bf16", "adept_fp32"):
        assert runs[name]["trained_layers"] == runs[name]["planner"]["trained_positions"] == [3, 5]
    assert runs["full_bf16"]["trained_layers"] is None
    # FLOPs per token against the independent FLOP model of benchmarks/common.py.
    with torch.device("meta"):
        numbers = common.layer_numbers(ModelArchitecture.from_hf_config(config).build(s))
    full = common.flops_per_token(numbers, 4, s).model
    adept = common.flops_per_token(numbers, 6, s, [3, 5]).model
    assert runs["full_bf16"]["planner"]["flops_per_token"] == pytest.approx(full, rel=1e-9)
    assert runs["adept_bf16"]["planner"]["flops_per_token"] == pytest.approx(adept, rel=1e-9)

    # bf16 against fp32: really two precisions (not bitwise equal), close, as recorded.
    for method in ("adept", "full"):
        p = result["precision"][method]
        assert len(p["bf16_losses"]) == len(p["fp32_losses"]) == 3
        assert p["bf16_losses"] != p["fp32_losses"]
        rel = max(abs(a - c) / c for a, c in zip(p["bf16_losses"], p["fp32_losses"], strict=True))
        assert p["max_rel_diff"] == pytest.approx(rel) and rel < 1e-3
        assert p["loss_passed"] and p["grad_norm_passed"] and p["grad_norm_rel_diff"] < 1e-2

    # Throughput: the median rate of the timed steps, MFU against the nominal peak.
    for method in ("adept", "full"):
        speed = result["throughput"][method]
        steps = runs[f"{method}_bf16"]["steps"]
        rates = [line["tokens_per_second_per_gpu"] for line in steps[preset.warmup_steps :]]
        assert speed["timed_steps"] == len(rates) == 2
        assert speed["tokens_per_s"] == pytest.approx(sum(rates) / 2)  # median of two
        flops = runs[f"{method}_bf16"]["planner"]["flops_per_step"]
        step_s = b * (s - 1) / speed["tokens_per_s"]
        assert speed["mfu"] == pytest.approx(flops / step_s / 0.001e12)

    # Memory on a CPU: the prediction is there, the check skipped (RSS is no tensor peak).
    for name in RUNS:
        memory = result["memory"][name]
        assert memory["predicted_gib"] == runs[name]["planner"]["peak_gib"]
        assert memory["measured_gib"] is None and memory["passed"] is None
    checks = {check["name"]: check["passed"] for check in result["checks"]}
    assert checks["adept: bf16 losses match fp32"] is True
    assert checks["full_bf16: peak memory"] is None
    assert result["passed"] is True and all(v is not False for v in checks.values())
