"""Our Qwen3 and Llama 3 decoders against transformers, the independent reference.

Qwen3 and the Llama architecture (tied or untied, plain or Llama 3 scaled RoPE with any
numbers, free head_dim). HF -> ours: transformers saves a random model, our checkpointer loads
it into our builder,
logits must agree (fp32, max relative error <= 1e-5). Ours -> HF: our checkpointer saves,
transformers loads, same logits.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import transformers
from conftest import TINY_LLAMA, TINY_QWEN3, hf_logits, rel_err, save_hf_model

from adept_components.checkpointing import HFCheckpointer
from adept_components.models import (
    Llama3RopeScaling,
    ModelArchitecture,
    architecture_of,
    model_from_hf_config,
    read_hf_config,
)

VARIANTS = {
    "qwen3_untied": TINY_QWEN3,
    "qwen3_tied": {**TINY_QWEN3, "tie_word_embeddings": True},
    "qwen3_mha_wide_head": {**TINY_QWEN3, "num_key_value_heads": 4, "head_dim": 32},
    "llama3_scaled_rope": TINY_LLAMA,
    "llama3_tied": {**TINY_LLAMA, "tie_word_embeddings": True},
    # SmolLM / SmolLM2 shape: tied head, plain RoPE (no rope_scaling), head_dim in config.json.
    "llama_tied_unscaled": {
        **TINY_LLAMA,
        "tie_word_embeddings": True,
        "rope_scaling": None,
        "rope_theta": 100_000.0,
        "head_dim": 16,
    },
    # Llama 3 scaling with every number off torchtune's defaults, at a context the test
    # sequence crosses: wavelengths below, inside and above the interpolation band all occur.
    "llama3_scaled_rope_custom": {
        **TINY_LLAMA,
        "max_position_embeddings": 512,
        "rope_theta": 10_000.0,
        "rope_scaling": dict(
            rope_type="llama3",
            factor=4.0,
            low_freq_factor=2.0,
            high_freq_factor=8.0,
            original_max_position_embeddings=32,
        ),
    },
    "llama_wide_head": {**TINY_LLAMA, "rope_scaling": None, "head_dim": 32},
}


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 37), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_to_ours_tohf_logits(tmp_path: Path, variant: str) -> None:
    arch = VARIANTS[variant]
    src = save_hf_model(tmp_path / "hf", arch)
    tokens = _tokens(arch["vocab_size"])
    expected = hf_logits(src, tokens)

    model = model_from_hf_config(str(src))
    ckpt = HFCheckpointer(str(src), str(tmp_path / "out"))
    ckpt.load_into(model)
    model.eval()
    with torch.no_grad():
        ours = model(tokens)
    assert ours.shape == expected.shape
    assert rel_err(ours, expected) <= 1e-5

    saved = ckpt.save(model.state_dict(), architecture_of(model), "roundtrip")
    assert rel_err(hf_logits(saved, tokens), expected) <= 1e-5


def test_stock_torchtune_attention_order_is_wrong_for_qwen3(tmp_path: Path) -> None:
    """Guard the reason Qwen3Attention exists: norm-after-RoPE visibly breaks parity."""
    from torchtune.modules import MultiHeadAttention

    src = save_hf_model(tmp_path / "hf", TINY_QWEN3)
    tokens = _tokens(TINY_QWEN3["vocab_size"])
    expected = hf_logits(src, tokens)
    model = model_from_hf_config(str(src))
    HFCheckpointer(str(src), str(tmp_path / "out")).load_into(model)
    for layer in model.layers:
        layer.attn.forward = MultiHeadAttention.forward.__get__(layer.attn)
    model.eval()
    with torch.no_grad():
        assert rel_err(model(tokens), expected) > 1e-3


def test_saved_config_is_written_from_the_model(tmp_path: Path) -> None:
    """A model deeper than its source checkpoint is saved with its true depth."""
    import json

    src = save_hf_model(tmp_path / "hf", TINY_QWEN3)
    ckpt = HFCheckpointer(str(src), str(tmp_path / "out"))
    deeper = {**TINY_QWEN3, "num_hidden_layers": 6}
    model = model_from_hf_config(str(save_hf_model(tmp_path / "deeper", deeper)))
    saved = ckpt.save(
        model.state_dict(), architecture_of(model), "deep", layer_sources=[0, 1, 1, 2, 3, 3]
    )
    config = json.loads((saved / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    assert config["layer_types"] == ["full_attention"] * 6
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(saved)
    assert len(reloaded.model.layers) == 6


def test_custom_rope_scaling_numbers_change_the_logits(tmp_path: Path) -> None:
    """Guard the custom-scaling parity test: torchtune's fixed numbers (1, 4, 8192) miss it."""
    arch = VARIANTS["llama3_scaled_rope_custom"]
    src = save_hf_model(tmp_path / "hf", arch)
    tokens = _tokens(arch["vocab_size"])
    expected = hf_logits(src, tokens)
    config = read_hf_config(src)
    fixed = dataclasses.replace(
        ModelArchitecture.from_hf_config(config),
        rope_scaling=Llama3RopeScaling(factor=arch["rope_scaling"]["factor"]),
    )
    model = fixed.build()
    HFCheckpointer(str(src), str(tmp_path / "out")).load_into(model)
    model.eval()
    with torch.no_grad():
        assert rel_err(model(tokens), expected) > 1e-4


@pytest.mark.parametrize("variant", ["llama_tied_unscaled", "llama3_scaled_rope_custom"])
def test_saved_config_keeps_tying_and_rope_as_they_came_in(tmp_path: Path, variant: str) -> None:
    src = save_hf_model(tmp_path / "hf", VARIANTS[variant])
    model = model_from_hf_config(str(src))
    ckpt = HFCheckpointer(str(src), str(tmp_path / "out"))
    saved = ckpt.save(model.state_dict(), architecture_of(model), "out")
    before, after = read_hf_config(src), read_hf_config(saved)
    for key in ("tie_word_embeddings", "rope_parameters", "rope_scaling", "rope_theta", "head_dim"):
        assert after.get(key) == before.get(key), key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            "rope_type='yarn' is not supported",
        ),
        ({"rope_scaling": {"rope_type": "llama3"}}, "lacks 'factor'"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4.0}},
            "0 < low_freq_factor < high_freq_factor",
        ),
        ({"attention_bias": True}, "attention_bias=True is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ],
)
def test_unbuildable_llama_configs_are_named(change: dict, message: str) -> None:
    config = {**TINY_LLAMA, **change}
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        ModelArchitecture.from_hf_config(config, "/models/x/config.json")
    assert str(info.value).startswith("/models/x/config.json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{\n  "model_type": "llama",\n', "is not valid JSON (line 3"),
        ("[1, 2]", "holds a JSON list"),
    ],
)
def test_malformed_config_json_is_named(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        read_hf_config(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)
