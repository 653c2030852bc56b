"""Our Qwen3 and Llama 3 decoders against transformers, the independent reference.

HF -> ours: transformers saves a random model, our checkpointer loads it into our builder,
logits must agree (fp32, max relative error <= 1e-5). Ours -> HF: our checkpointer saves,
transformers loads, same logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from conftest import TINY_LLAMA, TINY_QWEN3, save_hf_model

from adept_components.checkpointing import HFCheckpointer
from adept_components.models import architecture_of, model_from_hf_config

VARIANTS = {
    "qwen3_untied": TINY_QWEN3,
    "qwen3_tied": {**TINY_QWEN3, "tie_word_embeddings": True},
    "qwen3_mha_wide_head": {**TINY_QWEN3, "num_key_value_heads": 4, "head_dim": 32},
    "llama3_scaled_rope": TINY_LLAMA,
    "llama3_tied": {**TINY_LLAMA, "tie_word_embeddings": True},
}


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 37), generator=torch.Generator().manual_seed(1))


def _hf_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        return model(tokens).logits


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_to_ours_to_hf_logits(tmp_path: Path, variant: str) -> None:
    arch = VARIANTS[variant]
    src = save_hf_model(tmp_path / "hf", arch)
    tokens = _tokens(arch["vocab_size"])
    expected = _hf_logits(src, tokens)

    model = model_from_hf_config(str(src))
    ckpt = HFCheckpointer(str(src), str(tmp_path / "out"))
    ckpt.load_into(model)
    model.eval()
    with torch.no_grad():
        ours = model(tokens)
    assert ours.shape == expected.shape
    assert _rel_err(ours, expected) <= 1e-5

    saved = ckpt.save(model.state_dict(), architecture_of(model), "roundtrip")
    assert _rel_err(_hf_logits(saved, tokens), expected) <= 1e-5


def test_stock_torchtune_attention_order_is_wrong_for_qwen3(tmp_path: Path) -> None:
    """Guard the reason Qwen3Attention exists: norm-after-RoPE visibly breaks parity."""
    from torchtune.modules import MultiHeadAttention

    src = save_hf_model(tmp_path / "hf", TINY_QWEN3)
    tokens = _tokens(TINY_QWEN3["vocab_size"])
    expected = _hf_logits(src, tokens)
    model = model_from_hf_config(str(src))
    HFCheckpointer(str(src), str(tmp_path / "out")).load_into(model)
    for layer in model.layers:
        layer.attn.forward = MultiHeadAttention.forward.__get__(layer.attn)
    model.eval()
    with torch.no_grad():
        assert _rel_err(model(tokens), expected) > 1e-3


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
