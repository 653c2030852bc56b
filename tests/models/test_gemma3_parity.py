"""Gemma 3 against transformers: parity, both config spellings, expansion, bad configs.

Sequences of 37 tokens cross the tiny model's 8-token sliding window, so the window, the two
RoPE bases and the score scale all decide the logits (a test below shows the window does).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_GEMMA3, hf_logits, rel_err, save_hf_model

from adept_components.checkpointing import HFCheckpointer
from adept_components.expansion import (
    ExpansionMetadata,
    copy_fills,
    expand_model,
    expand_state_dict,
    gate_units,
    resolve_copy_init,
)
from adept_components.models import (
    FAMILIES,
    ModelArchitecture,
    architecture_of,
    model_from_hf_config,
    read_hf_config,
)
from adept_components.optim.unit_groups import unit_kind

VARIANTS = {
    "tied": TINY_GEMMA3,
    "untied": {**TINY_GEMMA3, "tie_word_embeddings": False},
    "linear_rope": {**TINY_GEMMA3, "rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    "mha_default_scale": {**TINY_GEMMA3, "num_key_value_heads": 4, "query_pre_attn_scalar": 16},
}


def _tokens(vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 37), generator=torch.Generator().manual_seed(1))


def _ours(directory: Path, out: Path) -> tuple[torch.nn.Module, HFCheckpointer]:
    model = model_from_hf_config(str(directory))
    checkpointer = HFCheckpointer(str(directory), str(out))
    checkpointer.load_into(model)
    return model.eval(), checkpointer


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_to_ours_tohf_logits(tmp_path: Path, variant: str) -> None:
    src = save_hf_model(tmp_path / "hf", VARIANTS[variant])
    tokens = _tokens()
    expected = hf_logits(src, tokens)
    model, checkpointer = _ours(src, tmp_path / "out")
    with torch.no_grad():
        assert rel_err(model(tokens), expected) <= 1e-5
    saved = checkpointer.save(model.state_dict(), architecture_of(model), "roundtrip")
    assert rel_err(hf_logits(saved, tokens), expected) <= 1e-5
    before, after = read_hf_config(src), read_hf_config(saved)
    for key in ("layer_types", "rope_parameters", "sliding_window", "query_pre_attn_scalar"):
        assert after[key] == before[key], key
    assert after["architectures"] == ["Gemma3ForCausalLM"]


def test_the_window_and_the_scale_decide_the_logits(tmp_path: Path) -> None:
    """Guard the parity test: without the window, or with head_dim's scale, it fails."""
    src = save_hf_model(tmp_path / "hf", TINY_GEMMA3)
    tokens = _tokens()
    expected = hf_logits(src, tokens)
    for change in ({"sliding_window": None}, {"scale": None}):
        model, _ = _ours(src, tmp_path / "out")
        for layer in model.layers:
            for name, value in change.items():
                setattr(layer.attn, name, value)
        with torch.no_grad():
            assert rel_err(model(tokens), expected) > 1e-3, change


def test_transformers_4_spelling_reads_as_the_5_spelling(tmp_path: Path) -> None:
    """Hub configs written by transformers 4.x: rope_theta, rope_local_base_freq,
    sliding_window_pattern (no layer_types), rope_scaling of the global layers."""
    arch = {**TINY_GEMMA3, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    arch["layer_types"] = ["sliding_attention"] * 5 + ["full_attention"]
    src = save_hf_model(tmp_path / "hf", arch)
    tokens = _tokens()
    expected = hf_logits(src, tokens)
    config = read_hf_config(src)
    params = config.pop("rope_parameters")
    legacy = {
        **{k: v for k, v in config.items() if k != "layer_types"},
        "rope_theta": params["full_attention"]["rope_theta"],
        "rope_local_base_freq": params["sliding_attention"]["rope_theta"],
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        "sliding_window_pattern": 6,
    }
    (src / "config.json").write_text(json.dumps(legacy))
    assert ModelArchitecture.from_hf_config(legacy) == ModelArchitecture.from_hf_config(
        {**config, "rope_parameters": params}
    )
    model, checkpointer = _ours(src, tmp_path / "out")
    with torch.no_grad():
        assert rel_err(model(tokens), expected) <= 1e-5
    # Saved in the spelling it came in, with the layer kinds written out.
    saved = read_hf_config(checkpointer.save(model.state_dict(), architecture_of(model), "o"))
    assert "rope_parameters" not in saved and "sliding_window_pattern" not in saved
    assert saved["rope_local_base_freq"] == legacy["rope_local_base_freq"]
    assert saved["layer_types"] == arch["layer_types"]


@pytest.mark.parametrize("copy_init", ["zero_out_proj", "zero_post_norm"])
def test_expanded_gemma3_loads_in_transformers_with_the_base_logits(
    tmp_path: Path, copy_init: str
) -> None:
    src = save_hf_model(tmp_path / "hf", TINY_GEMMA3)
    tokens = _tokens()
    expected = hf_logits(src, tokens)
    checkpointer = HFCheckpointer(str(src), str(tmp_path / "out"))
    family = FAMILIES["gemma3"]
    meta = ExpansionMetadata(6, (1, 2))  # a sliding and a global layer
    model = expand_model(checkpointer.architecture, meta)
    state = expand_state_dict(checkpointer.load_state_dict(), meta, copy_fills(family, copy_init))
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(tokens), _ours(src, tmp_path / "o2")[0](tokens))
    saved = checkpointer.save(
        model.state_dict(), architecture_of(model), "expanded", layer_sources=meta.layer_sources
    )
    config = read_hf_config(saved)
    base_types = TINY_GEMMA3["layer_types"]
    assert config["layer_types"] == [base_types[i] for i in meta.layer_sources]
    assert config["num_hidden_layers"] == 8
    assert rel_err(hf_logits(saved, tokens), expected) <= 1e-5
    # The copy of the global layer 2 is global, with the global RoPE base.
    copy = model.layers[meta.copy_positions[1]].attn
    assert copy.sliding_window is None and copy.pos_embeddings.base == 1_000_000.0


def test_copy_init_follows_the_family() -> None:
    gemma, qwen3 = FAMILIES["gemma3"], FAMILIES["qwen3"]
    assert resolve_copy_init(gemma) == "zero_post_norm"
    assert resolve_copy_init(qwen3) == "zero_out_proj"
    assert copy_fills(gemma) == {"sa_scale.": -1.0, "mlp_scale.": -1.0}
    assert copy_fills(gemma, "zero_out_proj") == {"attn.output_proj.": 0.0, "mlp.w2.": 0.0}
    assert gate_units(gemma, [3], "auto") == ["layers.3.sa_scale.scale", "layers.3.mlp_scale.scale"]
    assert gate_units(qwen3, [3], "auto") == []
    with pytest.raises(ValueError, match="qwen3 does not have"):
        copy_fills(qwen3, "zero_post_norm")


def test_post_branch_norms_are_norm_units() -> None:
    for name in ("sa_scale", "mlp_scale", "sa_norm", "attn.q_norm"):
        assert unit_kind(f"layers.4.{name}.scale") == "norm", name
    assert unit_kind("layers.4.attn.output_proj.weight") == "matrix"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"layer_types": ["sliding_attention"] * 5},
            "layer_types has 5 entries but the model has 6",
        ),
        (
            {"layer_types": ["sliding_attention"] * 5 + ["chunked_attention"]},
            "unknown layer type(s) ['chunked_attention']",
        ),
        ({"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0 is not implemented"),
        ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping=50.0 is not implemented"),
        (
            {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            "rope_scaling.rope_type='yarn' is not supported",
        ),
        ({"rope_scaling": {"rope_type": "linear"}}, "rope_scaling of rope_type 'linear' lacks"),
        (
            {
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0},
                }
            },
            "rope_parameters.sliding_attention.rope_type='linear' is not supported",
        ),
        ({"hidden_activation": "silu"}, "hidden_activation='silu' is not supported"),
        ({"model_type": "gemma3"}, "text_config"),
    ],
)
def test_unbuildable_gemma3_configs_are_named(change: dict, message: str) -> None:
    config = {**TINY_GEMMA3, **change}
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        ModelArchitecture.from_hf_config(config, "/models/g/config.json")
    assert str(info.value).startswith("/models/g/config.json")
    assert "\n" not in str(info.value)
