"""``tune run adept_eval``: the retention report of two HF checkpoints, end to end.

In-process runs call ``adept_eval.main`` with the argv ``tune run`` passes; one run and one
error go through the launcher in a subprocess.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import adept_eval
import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import tune_run
from evaluation_fixtures import BASE, GENERAL_HELDOUT, one_torch_thread, tiny_adapted_run
from omegaconf import OmegaConf

from adept_components.checkpointing import HFCheckpointer
from adept_components.config import load_config, resolve_config
from adept_components.data import probe_batches, probe_dataset
from adept_components.evaluation import retention_from_canary
from adept_components.losses import heldout_loss
from adept_components.models import model_from_hf_config
from adept_components.models.tokenizers import qwen3_tokenizer

IGNORE = -100


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_adapted_run(tmp_path_factory)


def evaluate(out: Path, adapted: Path, *overrides: str) -> dict:
    argv = [
        "--config",
        "adept_eval_demo",
        f"output_dir={out}",
        f"adapted_checkpoint_dir={adapted}",
        *overrides,
    ]
    assert adept_eval.main(argv) == 0
    return json.loads((out / "retention.json").read_text())


def held_out_batches(source: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The demo config's held-out set, built by hand."""
    data = probe_dataset(qwen3_tokenizer(str(BASE)), str(source), num_samples=32, max_seq_len=128)
    return probe_batches(data, 16)


def test_demo_config_validates_and_says_how_to_run() -> None:
    text = resolve_config("adept_eval_demo").read_text()
    assert text.startswith("# ") and "tune run adept_eval --config adept_eval_demo" in text
    cfg = load_config(["--config", "adept_eval_demo", f"adapted_checkpoint_dir={BASE}"])
    OmegaConf.resolve(cfg)
    adept_eval._validate(cfg)
    assert Path(cfg.base_checkpoint_dir) == BASE and cfg.tokenizer.path == str(BASE)


def test_base_against_itself_changes_nothing(tmp_path: Path) -> None:
    report = evaluate(tmp_path / "out", BASE)
    for name in ("general", "domain"):
        assert report[name]["loss_delta"] == 0.0
        assert report[name]["perplexity_delta"] == 0.0
        assert report[name]["base_loss"] == report[name]["adapted_loss"] > 0
    assert report["general"]["num_tokens"] == 3415  # 32 Austen paragraphs, 128-token cap
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "retention.json",
        "retention.md",
        "retention.png",
    ]


def test_losses_equal_probe_loss_transformers_and_the_canary(tmp_path: Path, run_dir: Path) -> None:
    final = run_dir / "final"
    report = evaluate(tmp_path / "out", final)
    batches = held_out_batches(GENERAL_HELDOUT)
    for role, directory in (("base", BASE), ("adapted", final)):
        model = model_from_hf_config(str(directory), max_seq_len=128)
        HFCheckpointer(str(directory), str(tmp_path)).load_into(model)
        assert report["general"][f"{role}_loss"] == heldout_loss(model, batches)

    # Independent reference: transformers on the same tokens, summed over supervised labels.
    hf = transformers.AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for tokens, labels in batches:
            logits = hf(tokens).logits[:, :-1]  # [b, s-1, v]
            target = labels[:, 1:]
            total += F.cross_entropy(
                logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE, reduction="sum"
            ).item()
            count += int((target != IGNORE).sum())
    assert report["general"]["adapted_loss"] == pytest.approx(total / count, rel=1e-5)
    assert count == report["general"]["num_tokens"]

    # The canary measured the same held-out sets at the last step of training.
    last = json.loads((run_dir / "canary.json").read_text())[-1]
    for name in ("general", "domain"):
        assert report[name]["adapted_loss"] == pytest.approx(last[f"{name}_loss"], rel=1e-6)
        assert report[name]["base_loss"] == pytest.approx(last[f"{name}_base"], rel=1e-6)
    assert report["domain"]["loss_delta"] < 0  # two domain steps already help


def test_retention_from_a_real_canary(tmp_path: Path, run_dir: Path) -> None:
    history = json.loads((run_dir / "canary.json").read_text())
    result = retention_from_canary(history, tmp_path)
    assert result["domain"]["adapted_loss"] == history[-1]["domain_loss"]
    assert result["general"]["base_loss"] == history[-1]["general_base"]
    assert (tmp_path / "canary.png").stat().st_size > 10_000


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edited_vocab(run_dir: Path, tmp_path: Path) -> Path:
    d = _copy(run_dir / "final", tmp_path / "edited")
    vocab = json.loads((d / "vocab.json").read_text())
    a, b = list(vocab)[500:502]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (d / "vocab.json").write_text(json.dumps(vocab))
    return d


def _edited_config(run_dir: Path, tmp_path: Path, **changes: int) -> Path:
    d = _copy(run_dir / "final", tmp_path / "edited_config")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, **changes}))
    return d


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_general", "general: source="),
        ("empty_domain", "domain: source"),
        ("edited_vocab", "adapted_checkpoint_dir: tokenizer mismatch: vocab.json differs"),
        ("other_vocab_size", "vocab_size=2048 in"),
        ("stale_config", "adapted_checkpoint_dir: the checkpoint does not fit the model"),
        ("no_adapted_dir", "adapted_checkpoint_dir="),
        ("long_held_out", "general.max_seq_len=2000 exceeds the base model's"),
        ("no_config", "missing --config: run `tune run adept_eval"),
        ("typo", "Did you mean batch_size"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path,
    run_dir: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    message: str,
) -> None:
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    adapted = run_dir / "final"
    overrides = {
        "missing_general": [f"general.source={tmp_path / 'nope.txt'}"],
        "empty_domain": [f"domain.source={empty}"],
        "edited_vocab": [],
        "other_vocab_size": [],
        "stale_config": [],
        "no_adapted_dir": [],
        "long_held_out": ["general.max_seq_len=2000"],
        "no_config": [],
        "typo": ["batch_sise=4"],
    }[case]
    if case == "edited_vocab":
        adapted = _edited_vocab(run_dir, tmp_path)
    elif case == "other_vocab_size":
        adapted = _edited_config(run_dir, tmp_path, vocab_size=4096)
    elif case == "stale_config":  # 10 layers of weights, config.json says 9
        adapted = _edited_config(run_dir, tmp_path, num_hidden_layers=9)
    elif case == "no_adapted_dir":
        adapted = tmp_path / "missing"
    argv = ["--config", "adept_eval_demo", f"output_dir={out}", f"adapted_checkpoint_dir={adapted}"]
    if case == "no_config":
        argv = argv[2:]
    with pytest.raises(SystemExit) as exit_info:
        adept_eval.main([*argv, *overrides])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("adept_eval: error: ") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()


@pytest.mark.slow
def test_tune_run_from_any_directory(tmp_path: Path, run_dir: Path) -> None:
    out = tmp_path / "report"
    args = ["--config", "adept_eval_demo", f"adapted_checkpoint_dir={run_dir / 'final'}"]
    result = tune_run(["adept_eval", *args, f"output_dir={out}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| general |" in result.stdout + result.stderr
    report = json.loads((out / "retention.json").read_text())
    assert report["metadata"]["adapted_checkpoint_dir"] == str((run_dir / "final").resolve())

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad = tune_run(
        ["adept_eval", *args, f"output_dir={tmp_path / 'bad'}", f"domain.source={empty}"],
        cwd=tmp_path,
    )
    assert bad.returncode == 1
    assert "adept_eval: error: domain: source" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
