"""Resume checkpoints that hold what trains: the trained tensors and their optimizer state over
a reference to the base checkpoint (``intermediate_checkpoints=trainable``, the default)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import adept_cpt
import pytest
import torch
from conftest import tune_run
from safetensors.torch import load_file

from adept_components.checkpointing import (
    TrainableCheckpointInfo,
    read_trainable_tensors,
)
from adept_components.cli import main as cli_main
from adept_components.config import asset_path

BASE = Path(asset_path("demo/base_model"))
COMMON = ["method=llama_pro", "canary.every_n_steps=0", "unit_tuning.refresh_every=2"]


def run(out: Path, *overrides: str) -> None:
    assert adept_cpt.main(["--config", "tiny_demo", f"output_dir={out}", *COMMON, *overrides]) == 0


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 4-step run twice, saving step 2 as a full HF model and as trained tensors."""
    root = tmp_path_factory.mktemp("formats")
    out = {"full": root / "full", "trainable": root / "trainable"}
    for contents, directory in out.items():
        run(
            directory, "max_steps=4", "save_every_n_steps=2", f"intermediate_checkpoints={contents}"
        )
    return out


def test_a_trainable_checkpoint_holds_the_copies_and_exports_the_full_save(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full, trainable = (
        runs["full"] / "checkpoints" / "step_2",
        runs["trainable"] / "checkpoints" / "step_2",
    )
    info = TrainableCheckpointInfo.read(trainable)
    meta = json.loads((trainable / "adept_expansion.json").read_text())
    # Only the copies' tensors are stored (and every one of them), with their optimizer state.
    assert {int(name.split(".")[1]) for name in info.tensors} == set(meta["copy_positions"])
    assert sorted(read_trainable_tensors(trainable)) == sorted(info.tensors)
    assert not (trainable / "model.safetensors").exists()
    assert size(trainable) < size(full) / 2
    # A full HF export of the step equals the full save of the same step, tensors and config.
    capsys.readouterr()
    assert cli_main(["export", str(trainable), str(tmp_path / "step_2")]) == 0
    assert f"Exported {trainable} to {tmp_path / 'step_2'}" in capsys.readouterr().out
    assert_same(tensors(tmp_path / "step_2"), tensors(full))
    for name in ("config.json", "adept_expansion.json", "tokenizer.json"):
        assert (tmp_path / "step_2" / name).read_bytes() == (full / name).read_bytes(), name
    assert_same(tensors(runs["trainable"] / "final"), tensors(runs["full"] / "final"))


def test_resume_from_a_full_checkpoint_gives_the_uninterrupted_run(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """(The trainable form's exact resume: test_adept_cpt.py's resume tests, which use it.)"""
    contents = "full"
    out = tmp_path / "resumed"
    shutil.copytree(runs[contents] / "checkpoints", out / "checkpoints")
    run(out, "max_steps=4", "save_every_n_steps=2", f"intermediate_checkpoints={contents}",
        "resume_from_checkpoint=true")  # fmt: skip
    assert_same(tensors(out / "final"), tensors(runs[contents] / "final"))


def test_resume_refuses_another_base_and_names_damaged_files(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(out: Path, *overrides: str) -> str:
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        capsys.readouterr()
        with pytest.raises(SystemExit):
            run(out, "max_steps=4", "resume_from_checkpoint=true", *overrides)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
        return err

    out = tmp_path / "run"
    shutil.copytree(runs["trainable"] / "checkpoints", out / "checkpoints")
    step = out / "checkpoints" / "step_2"
    other = tmp_path / "other_base"
    shutil.copytree(BASE, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    err = refused(out, f"checkpointer.checkpoint_dir={other}")
    assert f"{step} holds only the trained tensors" in err and "config.json differs" in err, err

    shard = next(step.glob("*.safetensors"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert f"{shard} is truncated ({len(data) // 2:,} of {len(data):,} bytes)" in refused(out)
    shard.write_bytes(data)

    (step / "resume.json").write_text("[1, 2]")
    assert f"{step / 'resume.json'} is not a resume record" in refused(out)


def test_export_refuses_a_full_checkpoint(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = runs["full"] / "checkpoints" / "step_2"
    assert cli_main(["export", str(full), str(tmp_path / "x")]) == 2
    assert "already a complete HF model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_two_ranks_write_their_own_shards_and_one_process_resumes(tmp_path: Path) -> None:
    """FSDP2 on two ranks: each writes its shard of the trained tensors and optimizer state
    (nothing gathered on rank 0); one process accumulating two micro-batches resumes from them
    and finishes as it would have without the interruption."""
    common = [*COMMON, "max_steps=4", "batch_size=4", "save_every_n_steps=0"]
    two = ["--nproc_per_node", "2", "adept_cpt", "--config", "tiny_demo"]
    out = tmp_path / "two"
    result = tune_run([*two, f"output_dir={out}", *common, "stop_after_steps=2"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    step = out / "checkpoints" / "step_2"
    assert len(list(step.glob("shard-0000[12]-*.safetensors"))) == 2
    run(out, *common[len(COMMON) :], "gradient_accumulation_steps=2", "resume_from_checkpoint=true")
    run(tmp_path / "one", *common[len(COMMON) :], "gradient_accumulation_steps=2")
    one, resumed = tensors(tmp_path / "one" / "final"), tensors(out / "final")
    assert one.keys() == resumed.keys()
    for key in one:  # the ranks reduce gradients in another order: equal to float rounding
        torch.testing.assert_close(resumed[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
