"""Every shipped config parses, validates and builds its (expanded) model on the meta device."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torchtune import config as tt_config

from adept_components.config import RunPlan, available_configs, load_config, resolve_config
from adept_components.expansion import ExpansionMetadata, expand_model, uniform_source_layers
from adept_components.trainable import freeze_all_but

CPT_CONFIGS = [
    name
    for name in available_configs()
    if f"tune run adept_cpt --config {name}" in resolve_config(name).read_text()
]
PAPER_CONFIGS = [name for name in CPT_CONFIGS if name != "tiny_demo"]


def test_the_paper_configs_are_shipped() -> None:
    expected = {
        f"{m}_{d}"
        for m in ("qwen3_8b", "qwen3_4b", "qwen3_1_7b", "llama3_1_8b")
        for d in ("medical", "math")
    }
    assert expected <= set(PAPER_CONFIGS)


# SmolLM2-135M-Instruct's config.json (what benchmarks/prepare_smollm2.py writes), for configs
# that build the model from the checkpoint directory; 134,515,008 parameters published.
SMOLLM2_CONFIG = {
    "model_type": "llama",
    "vocab_size": 49152,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
}

# Gemma 3 270M's config.json (what benchmarks/prepare_gemma3.py writes); 268,098,176 parameters.
GEMMA3_270M_CONFIG = {
    "model_type": "gemma3_text",
    "vocab_size": 262144,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "head_dim": 256,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "sliding_window": 512,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "rope_parameters": {
        "full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
    },
    "tie_word_embeddings": True,
}
# Parameters of the models the configs build from a prepared directory, as published.
PREPARED = {
    "smollm2_": (SMOLLM2_CONFIG, 134_515_008),
    "gemma3_270m_": (GEMMA3_270M_CONFIG, 268_098_176),
}


@pytest.mark.parametrize("name", CPT_CONFIGS)
def test_config_validates_and_builds_on_meta(name: str, tmp_path) -> None:
    import json

    cfg = load_config(["--config", name])
    prepared = next((p for prefix, p in PREPARED.items() if name.startswith(prefix)), None)
    if prepared:  # model_from_hf_config reads the prepared directory
        (tmp_path / "config.json").write_text(json.dumps(prepared[0]))
        cfg.checkpointer.checkpoint_dir = str(tmp_path)
    OmegaConf.resolve(cfg)
    cfg.device = "cpu"  # the paper configs say cuda; this machine may have none
    RunPlan.from_config(cfg)
    text = resolve_config(name).read_text()
    assert text.startswith("# ") and f"tune run adept_cpt --config {name}" in text
    if name == "tiny_demo":
        return  # built for real by the recipe tests
    with torch.device("meta"):
        base = tt_config.instantiate(cfg.model)
    num_layers = len(base.layers)
    if prepared:
        assert sum(p.numel() for p in base.parameters()) == prepared[1]
    k = cfg.expansion.num_layers
    meta = ExpansionMetadata(num_layers, uniform_source_layers(num_layers, k))
    with torch.device("meta"):
        model = expand_model(lambda: tt_config.instantiate(cfg.model), meta)
    summary = freeze_all_but(model, meta.copy_positions)
    print(
        f"{name}: base {sum(p.numel() for p in base.parameters()):,} parameters, k={k}, {summary}"
    )
    assert len(model.layers) == num_layers + k
    assert 0.05 < summary.share < 0.25  # the paper trains roughly 10-18% of the parameters


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_data_entries_name_real_arguments(name: str) -> None:
    """The hub datasets cannot be read here, so check every data entry against its builder:
    the probe mixes both kinds of spec S1.1 and each part passes only probe_dataset arguments."""
    import inspect

    from adept_components.data import packed_text_dataset, probe_dataset, probe_mixture

    cfg = OmegaConf.to_container(load_config(["--config", name]))
    assert cfg["probe"]["_component_"] == "adept_components.data.probe_mixture"
    assert set(cfg["probe"]) - {"_component_"} <= set(inspect.signature(probe_mixture).parameters)
    accepted = set(inspect.signature(probe_dataset).parameters) - {"tokenizer", "max_seq_len"}
    parts = cfg["probe"]["parts"]
    assert {p["kind"] for p in parts} == {"text", "instruction"}
    assert all(set(p) <= accepted for p in parts), parts
    for entry in (cfg["canary"]["general"], cfg["canary"]["domain"]):
        assert set(entry) - {"_component_"} <= set(inspect.signature(probe_dataset).parameters)
    dataset = set(cfg["dataset"]) - {"_component_"}
    assert dataset <= set(inspect.signature(packed_text_dataset).parameters)
