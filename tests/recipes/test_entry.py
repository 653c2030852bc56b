"""``tune run adept_cpt`` end to end in subprocesses, from a directory outside the repo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers
from conftest import tune_run, write_run_config, write_tiny_qwen3_checkpoint


@pytest.fixture
def tiny_run(tmp_path: Path) -> tuple[Path, Path, Path]:
    ckpt = write_tiny_qwen3_checkpoint(tmp_path / "base")
    out = tmp_path / "out"
    config = write_run_config(tmp_path / "tiny.yaml", ckpt, out)
    work = tmp_path / "elsewhere"
    work.mkdir()
    return config, ckpt, out


@pytest.mark.slow
def test_path_config_from_any_directory(tiny_run: tuple[Path, Path, Path]) -> None:
    config, _, out = tiny_run
    result = tune_run(["adept_cpt", "--config", str(config)], cwd=config.parent / "elsewhere")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Selected layers" in result.stderr + result.stdout
    saved = out / "final"
    assert json.loads((saved / "config.json").read_text())["num_hidden_layers"] == 5
    assert (saved / "tokenizer.json").is_file()
    assert transformers.AutoModelForCausalLM.from_pretrained(saved).config.num_hidden_layers == 5
    assert list((out / "logs").glob("*.txt"))


def test_unknown_config_name_lists_shipped_configs(tmp_path: Path) -> None:
    result = tune_run(["adept_cpt", "--config", "no_such_config"], cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert "no_such_config" in result.stderr and "tiny_demo" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_sise=4", "no key 'batch_sise'"),
        ("seed=1=2", "malformed override"),
        ("checkpointer.checkpoint_dirr=/x", "Did you mean checkpointer.checkpoint_dir"),
    ],
)
def test_bad_override_is_one_clear_error(
    tiny_run: tuple[Path, Path, Path], override: str, message: str
) -> None:
    config, _, out = tiny_run
    result = tune_run(
        ["adept_cpt", "--config", str(config), override], cwd=config.parent, timeout=120
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ckpt: (ckpt / "config.json").unlink(), "config.json is missing"),
        (lambda ckpt: (ckpt / "model.safetensors").unlink(), "no model weights"),
        (
            lambda ckpt: _rewrite_config(ckpt, model_type="gpt2"),
            "model_type='gpt2' is not supported",
        ),
    ],
    ids=["no_config_json", "no_tensors", "unknown_model_type"],
)
def test_bad_checkpoint_is_one_clear_error(
    tiny_run: tuple[Path, Path, Path], mutate, message: str
) -> None:
    config, ckpt, out = tiny_run
    mutate(ckpt)
    result = tune_run(["adept_cpt", "--config", str(config)], cwd=config.parent, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_checkpoint_dir(tiny_run: tuple[Path, Path, Path]) -> None:
    config, _, out = tiny_run
    result = tune_run(
        ["adept_cpt", "--config", str(config), "checkpointer.checkpoint_dir=/nonexistent/qwen"],
        cwd=config.parent,
        timeout=120,
    )
    assert result.returncode == 1
    assert "checkpoint_dir '/nonexistent/qwen' does not exist" in result.stderr
    assert not out.exists()


def _rewrite_config(ckpt: Path, **changes: object) -> None:
    path = ckpt / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
