"""Gemma 3 through the recipe: a tiny random one (fast), then Gemma 3 270M, the real BASE model.

The tiny model (``conftest.TINY_GEMMA3`` with a locally trained tokenizer) checks what needs no
real weights: a tokenizer without ``<bos>`` is refused before anything is written, copies keep
their source's attention kind, the expanded output loads in transformers with the base
logits, and only the copies change while their gains train at the multiplied rate.


``benchmarks/prepare_gemma3.py`` writes the HF directory from the part wheels' GGUF (once per
session, ``conftest.gemma3_prepared``); the shipped ``gemma3_270m_medical`` config then runs as
a user types it, with explicit copies of full-attention and sliding layers: the expansion
(copies keep their source's attention kind; post-branch norm gains zero), unit scoring,
training steps and the retention report. transformers must load the output with the right ``layer_types``, the expanded model before training must
give exactly the base model's logits past the sliding window, and the first training steps
must not make the general loss jump (the trap of zeroed projections behind Gemma's post-norms)
while the domain loss falls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from conftest import (
    SAMPLE_TEXT,
    TINY_GEMMA3,
    real_model_run,
    save_hf_model,
    tune_run,
    write_qwen_tokenizer,
)
from safetensors.torch import load_file

from adept_components.config import asset_path


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Gemma 3 directory with a real BPE tokenizer; ``<|im_start|>`` plays ``<bos>``."""
    directory = tmp_path_factory.mktemp("tiny_gemma3")
    n_ids = write_qwen_tokenizer(directory, [SAMPLE_TEXT] * 20)
    vocab = json.loads((directory / "tokenizer.json").read_text())
    bos = next(t["id"] for t in vocab["added_tokens"] if t["content"] == "<|im_start|>")
    arch = {**TINY_GEMMA3, "vocab_size": (n_ids + 63) // 64 * 64, "bos_token_id": bos}
    return save_hf_model(directory, {**arch, "max_position_embeddings": 256})


def _tiny_run(model_dir: Path, out: Path, *overrides: str) -> tuple[int, str]:
    args = [
        "adept_cpt",
        "--config",
        "tiny_demo",
        f"checkpointer.checkpoint_dir={model_dir}",
        f"output_dir={out}",
        "tokenizer._component_=adept_components.models.tokenizers.hf_tokenizer",
        "+tokenizer.eos_token=<|endoftext|>",
        "probe.num_samples=8",
        "probe.max_seq_len=32",
        "dataset.max_seq_len=32",
        f"dataset.source={asset_path('demo/general.txt')}",
        "expansion.layers=[1,2]",
        "canary.every_n_steps=0",
        *overrides,
    ]
    done = tune_run(args, cwd=out.parent)
    return done.returncode, done.stdout + done.stderr


def test_tiny_gemma3_needs_bos(tiny_gemma3: Path, tmp_path: Path) -> None:
    code, log = _tiny_run(tiny_gemma3, tmp_path / "no_bos", "max_steps=1")
    assert code == 1
    assert "needs <bos> at position 0 of every sequence" in log and "tokenizer.bos_token" in log
    assert "Traceback" not in log and not (tmp_path / "no_bos").exists()


def test_tiny_gemma3_expands_exactly_and_trains_only_the_copies(
    tiny_gemma3: Path, tmp_path: Path
) -> None:
    bos = "+tokenizer.bos_token=<|im_start|>"
    code, log = _tiny_run(tiny_gemma3, tmp_path / "s1", bos, "stage1_only=true")
    assert code == 0, log[-3000:]
    assert "(copy init zero_post_norm)" in log
    tokens = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(0))
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_gemma3).eval()
    expanded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "s1" / "final").eval()
    types = TINY_GEMMA3["layer_types"]
    assert expanded.config.layer_types == [types[i] for i in (0, 1, 1, 2, 2, 3, 4, 5)]
    with torch.no_grad():
        assert torch.equal(base(tokens).logits, expanded(tokens).logits)

    code, log = _tiny_run(
        tiny_gemma3,
        tmp_path / "train",
        bos,
        "max_steps=3",
        "expansion.gate_lr_multiplier=20",
        "lr_scheduler.num_warmup_steps=0",
        "optimizer.lr=1e-3",
    )
    assert code == 0, log[-3000:]
    assert "Copy gains 4 units at 20x the learning rate" in log
    before = load_file(str(tmp_path / "s1" / "final" / "model.safetensors"))
    after = load_file(str(tmp_path / "train" / "final" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.layers.2.", "model.layers.4.")) for k in changed)
    gain = after["model.layers.2.post_attention_layernorm.weight"] + 1.0  # (1 + w), was 0
    # AdamW moves each element by about lr per step: here 20 x 1e-3 over 3 steps.
    assert 0.01 < gain.abs().max().item() <= 3 * 20 * 1e-3 * 1.01


def _tune_run(model_dir: Path, data_dir: Path, out: Path, *overrides: str) -> str:
    return real_model_run("gemma3_270m_medical", model_dir, data_dir, out, *overrides)


@pytest.mark.slow
def test_gemma3_end_to_end(gemma3_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    # Explicit copies (full-attention layers 5 and 17, sliding 8 and 14): the probe's 19
    # passes through the 262k-entry head would be most of this test, and the SmolLM2 test
    # and the frontier benchmark run the probe on real models already.
    sources = [5, 8, 14, 17]
    layers = f"expansion.layers={sources}".replace(" ", "")
    log = _tune_run(gemma3_dir, data_dir, tmp_path / "stage1", layers, "stage1_only=true")
    assert "Expanded 18 -> 22 layers" in log and "(copy init zero_post_norm)" in log
    base = transformers.AutoModelForCausalLM.from_pretrained(gemma3_dir).eval()
    expanded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "stage1" / "final")
    types = base.config.layer_types
    expected_types = [t for i, t in enumerate(types) for _ in range(2 if i in sources else 1)]
    assert expanded.config.layer_types == expected_types
    # <bos>-led, longer than the 512-token window: the sliding layers' masks matter.
    tokens = torch.randint(3, 262_144, (1, 600), generator=torch.Generator().manual_seed(0))
    tokens[0, 0] = 2
    with torch.no_grad():
        assert torch.equal(base(tokens).logits, expanded.eval()(tokens).logits)
    del expanded

    log = _tune_run(
        gemma3_dir,
        data_dir,
        tmp_path / "train",
        layers,
        "max_steps=3",
        "lr_scheduler.num_warmup_steps=0",
        "unit_tuning.refresh_every=2",
        "canary.every_n_steps=1",
        "canary.general.num_samples=4",
        "canary.general.max_seq_len=64",
        "canary.domain.num_samples=4",
        "canary.domain.max_seq_len=64",
    )
    assert "Refreshed 52 unit scales" in log and "Copy gains 8 units" in log
    canary = json.loads((tmp_path / "train" / "canary.json").read_text())
    general = [c["general_loss"] - c["general_base"] for c in canary]
    domain = [c["domain_loss"] - c["domain_base"] for c in canary]
    # Measured (fp32, CPU, 2 x 64 tokens a step at lr 3e-4, gains at x100; 4 + 4 canary
    # samples of 64 tokens): general -0.0002, -0.0013, -0.0022 and domain -0.0040, -0.0111,
    # -0.0141 after steps 1-3. The spec's init (zeroed projections) puts the general loss
    # nats above the base within a few steps (BENCHMARKS.md, "Gemma 3 270M: expansion under
    # sandwich norms").
    assert max(general) < 0.01, general
    assert domain[-1] < domain[0] < 0, domain
    trained = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "train" / "final")
    assert trained.config.num_hidden_layers == 22
    with torch.no_grad():
        logits = trained.eval()(tokens[:, :64]).logits
    assert torch.isfinite(logits).all()


def test_adept_eval_holds_gemma3_to_bos_led_samples(
    tiny_gemma3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The retention report of two Gemma checkpoints measures <bos>-led samples only."""
    import adept_eval

    argv = [
        "--config",
        "adept_eval_demo",
        f"base_checkpoint_dir={tiny_gemma3}",
        f"adapted_checkpoint_dir={tiny_gemma3}",
        "tokenizer._component_=adept_components.models.tokenizers.hf_tokenizer",
        "+tokenizer.eos_token=<|endoftext|>",
        "general.max_seq_len=32",
        "domain.max_seq_len=32",
    ]
    with pytest.raises(SystemExit) as refused:
        adept_eval.main([*argv, f"output_dir={tmp_path / 'no_bos'}"])
    assert refused.value.code == 1
    assert "needs <bos> at position 0" in capsys.readouterr().err
    assert not (tmp_path / "no_bos").exists()

    out = tmp_path / "bos"
    assert adept_eval.main([*argv, f"output_dir={out}", "+tokenizer.bos_token=<|im_start|>"]) == 0
    report = json.loads((out / "retention.json").read_text())
    assert report["general"]["loss_delta"] == 0.0 and report["domain"]["loss_delta"] == 0.0
