"""Failure behaviour of adept_cpt: a refused run writes nothing, a damaged file is named in one
line, an interrupted save leaves no gap, and the throughput metric counts training only."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import adept_cpt
import pytest
from conftest import tune_run

from adept_components.atomic import recover_directories
from adept_components.config import asset_path

BASE = Path(asset_path("demo/base_model"))
QUICK = ["method=llama_pro", "max_steps=2", "canary.every_n_steps=0"]


def run(out: Path, *overrides: str) -> None:
    assert adept_cpt.main(["--config", "tiny_demo", f"output_dir={out}", *overrides]) == 0


def refused(out: Path, capsys: pytest.CaptureFixture[str], *overrides: str) -> str:
    """Run and expect a one-line refusal; return the line."""
    capsys.readouterr()  # what earlier runs printed
    with pytest.raises(SystemExit) as exit_info:
        adept_cpt.main(["--config", "tiny_demo", f"output_dir={out}", *overrides])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("adept_cpt: error: ") and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}  # fmt: skip


def copy_base(tmp_path: Path) -> Path:
    target = tmp_path / "base"
    shutil.copytree(BASE, target)
    return target


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output_dir of a finished run, to point refused runs at."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run(out, *QUICK, "save_every_n_steps=1")
    return out


def _foreign_profile(tmp_path: Path) -> Path:
    """A valid profile file, of another (3-layer) model."""
    record = {
        "format_version": 1,
        "method": "mask-out",
        "selected_layers": [0],
        "base_loss": 1.0,
        "layer_scores": {"mask-out": [0.5, 0.5, 0.5]},
        "unit_scores": {},
        "model": {"num_layers": 3, "architecture": {"family": "qwen3"}, "checkpoint_dir": None},
        "data": {"source": "x", "kind": "text", "split": None, "num_samples": 1,
                 "max_seq_len": 8, "num_tokens": 8, "num_skipped": 0},
    }  # fmt: skip
    path = tmp_path / "foreign_profile.json"
    path.write_text(json.dumps(record))
    return path


REFUSALS = {
    "missing_profile": (lambda tmp: ["expansion.profile=/nonexistent/layer_importance.json"],
                        "expansion.profile: no layer profile at"),
    "foreign_profile": (lambda tmp: [f"expansion.profile={_foreign_profile(tmp)}"],
                        "expansion.profile"),
    "negative_lr": (lambda tmp: ["optimizer.lr=-1e-3"], "optimizer.lr=-0.001 must be a positive"),
    "small_corpus": (lambda tmp: ["batch_size=100000"], "fewer than one global batch"),
    "lora_rank_zero": (lambda tmp: ["method=lora", "lora.rank=0"], "lora.rank=0"),
    "lora_rank_too_large": (lambda tmp: ["method=lora", "lora.rank=100000"],
                            "lora.rank=100000 is larger than q_proj's smaller dimension"),
    "lora_unknown_target": (lambda tmp: ["method=lora", "lora.targets=[q_proj,qkv_proj]"],
                            "'qkv_proj' is not a target; the targets are q_proj, k_proj"),
    "lora_field_other_method": (lambda tmp: ["lora.rank=8"],
                                "lora.rank=8 applies to method=lora only, but method=adept"),
    "lora_full_checkpoints": (lambda tmp: ["method=lora", "intermediate_checkpoints=full"],
                              "intermediate_checkpoints=full with method=lora"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_run_writes_nothing(
    case: str, tmp_path: Path, finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides, message = REFUSALS[case]
    fresh = tmp_path / "fresh"
    assert message in refused(fresh, capsys, *overrides(tmp_path))
    assert not fresh.exists()
    before = snapshot(finished)
    assert message in refused(finished, capsys, *overrides(tmp_path), "max_steps=4")
    assert snapshot(finished) == before  # no log file added, the saved config not rewritten


def test_weights_that_disagree_with_config_json_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = copy_base(tmp_path)
    config = json.loads((base / "config.json").read_text())
    config["intermediate_size"] *= 2
    (base / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    err = refused(out, capsys, f"checkpointer.checkpoint_dir={base}")
    assert "shape" in err and str(base) in err, err
    assert not out.exists()


DAMAGE = {
    "truncated_safetensors": ("model.safetensors", lambda b: b[: len(b) // 2],
                              "model.safetensors ({size} bytes) is not a readable safetensors"),
    "garbage_safetensors": ("model.safetensors", lambda b: b"\x00garbage" * 100,
                            "model.safetensors (800 bytes) is not a readable safetensors"),
    "config_not_an_object": ("config.json", lambda b: b"[1, 2]", "config.json"),
    "config_invalid_json": ("config.json", lambda b: b'{"hidden_size": 8,', "config.json"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_input_file_is_named(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, damage, message = DAMAGE[case]
    base = copy_base(tmp_path)
    damaged = damage((base / name).read_bytes())
    (base / name).write_bytes(damaged)
    out = tmp_path / "out"
    err = refused(out, capsys, f"checkpointer.checkpoint_dir={base}")
    assert str(base / name) in err, err
    assert message.format(size=f"{len(damaged):,}") in err, err
    assert not out.exists()


def test_a_damaged_training_state_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    run(out, *QUICK, "max_steps=4", "stop_after_steps=2")
    state = out / "checkpoints" / "step_2" / "training_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    before = snapshot(out)
    err = refused(out, capsys, *QUICK, "max_steps=4", "resume_from_checkpoint=true")
    assert f"{state} is not a readable training state" in err, err
    assert snapshot(out) == before


def test_a_crash_inside_a_save_is_cleaned_up_at_the_next_start(tmp_path: Path) -> None:
    """What a kill between the steps of a checkpoint replacement leaves, and the recovery."""
    out = tmp_path / "run"
    run(out, *QUICK, "max_steps=4", "stop_after_steps=2")
    checkpoints = out / "checkpoints"
    # killed while writing step_3: a partial temporary directory
    (checkpoints / ".step_3.tmp-123-0123abcd").mkdir()
    # killed between moving step_2 aside and renaming its replacement in: only the old copy
    (checkpoints / "step_2").rename(checkpoints / ".step_2.old-123-89abcdef")
    (checkpoints / ".step_2.tmp-123-89abcdef").mkdir()
    unrelated = checkpoints / ".keep-me"
    unrelated.mkdir()
    run(out, *QUICK, "max_steps=4", "resume_from_checkpoint=true")
    left = sorted(p.name for p in checkpoints.iterdir())
    assert left == [".keep-me", "step_2"], left  # restored, resumed from, nothing stale left
    assert (out / "final" / "model.safetensors").is_file()
    assert recover_directories(tmp_path / "absent") == []


def test_stop_on_a_save_step_saves_once_and_throughput_counts_training_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = adept_cpt.unit_importance

    def slow_scoring(*args, **kwargs):  # a re-scoring that takes 3 s
        time.sleep(3.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(adept_cpt, "unit_importance", slow_scoring)
    out = tmp_path / "run"
    overrides = ["max_steps=6", "save_every_n_steps=2", "stop_after_steps=4"]
    with caplog.at_level("INFO", logger=adept_cpt.log.name):
        run(out, "method=random", "unit_tuning.refresh_every=2", "canary.every_n_steps=0", *overrides)  # fmt: skip
    saves = re.findall(r"Saved .*? to (\S+) in", caplog.text)
    assert saves == [str(out / "checkpoints" / "step_2"), str(out / "checkpoints" / "step_4")]
    log = next((out / "logs").glob("log_*.txt")).read_text()
    refresh = [float(v) for v in re.findall(r"refresh_seconds:(\S+)", log)]
    assert len(refresh) == 2 and min(refresh) >= 3.0  # steps 2 and 4
    assert len(re.findall(r"save_seconds:(\S+)", log)) == 2
    per_step = {int(m[1]): float(m[2]) for m in re.finditer(r"Step (\d+) \|.*?tokens_per_second_per_gpu:(\S+)", log)}  # fmt: skip
    step_tokens = 8 * 127  # batch 8 x (128 - 1) supervised tokens of the demo config
    assert step_tokens / per_step[3] < 2.0, (
        log
    )  # the 3 s of re-scoring after step 2 is not in step 3


@pytest.mark.slow
def test_kill_at_random_moments_leaves_loadable_checkpoints_and_resume_finishes(
    tmp_path: Path,
) -> None:
    """kill -9 a run that saves every step, twice at seeded random moments: every visible
    checkpoint is complete (weights and training state load), and resume finishes the run."""
    import os
    import random
    import signal
    import subprocess
    import sys

    import torch

    from adept_components.checkpointing import TrainableCheckpointInfo, read_trainable_tensors

    overrides = [*QUICK, "max_steps=24", "save_every_n_steps=1"]
    rng = random.Random(0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for trial in range(2):
        out = tmp_path / f"trial{trial}"
        cmd = [sys.executable, "-m", "adept_cpt", "--config", "tiny_demo", f"output_dir={out}"]
        proc = subprocess.Popen([*cmd, *overrides], env=env, stderr=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("step_*")) and time.monotonic() < deadline:
            time.sleep(0.05)  # the first checkpoint is complete: training and saving go on
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        visible = [p for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")]
        for step_dir in visible:
            info = TrainableCheckpointInfo.read(step_dir)
            assert sorted(read_trainable_tensors(step_dir)) == sorted(info.tensors)
            torch.load(step_dir / "training_state.pt", weights_only=True)
        run(out, *overrides, "save_every_n_steps=0", "resume_from_checkpoint=true")
        assert (out / "final" / "model.safetensors").is_file()
        assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_the_recipe_starts_quietly(tmp_path: Path) -> None:
    """torchao's notice about its C++ extensions is dropped under ``tune run``, which imports
    torchao before our code (the installed ``adept_cpt_quiet.pth`` filters it at start-up);
    the refusal is the only line."""
    import site

    from adept_components.quiet import NOTICE

    refusal = [
        "adept_cpt: error: method='nope'; use one of adept, full, llama_pro, no_stage1, "
        "no_stage2, random, spectrum, lora"
    ]
    result = tune_run(["adept_cpt", "--config", "tiny_demo", "method=nope"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == refusal, result.stderr
    pth = [Path(d) / "adept_cpt_quiet.pth" for d in site.getsitepackages()]
    assert any(NOTICE in p.read_text() for p in pth if p.is_file()), pth
