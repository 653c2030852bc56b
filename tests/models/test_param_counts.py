"""Every named builder has exactly the parameter count of the published HF model.

Both sides are built on the meta device from the published config.json numbers, so this runs
in seconds with no download.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import transformers

from adept_components import models

_QWEN3 = dict(
    vocab_size=151_936,
    head_dim=128,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=40_960,
)
# Published config.json numbers of Qwen/Qwen3-* (layers, hidden, heads, kv heads, intermediate, tied).
QWEN3_CONFIGS = {
    "qwen3_0_6b": (28, 1024, 16, 8, 3072, True),
    "qwen3_1_7b": (28, 2048, 16, 8, 6144, True),
    "qwen3_4b": (36, 2560, 32, 8, 9728, True),
    "qwen3_8b": (36, 4096, 32, 8, 12288, False),
    "qwen3_14b": (40, 5120, 40, 8, 17408, False),
    "qwen3_32b": (64, 5120, 64, 8, 25600, False),
}
_LLAMA_SCALING = dict(
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
    rope_type="llama3",
)
# Published config.json numbers of meta-llama/Llama-3.1-8B, -70B, Llama-3.2-1B, -3B.
LLAMA_CONFIGS = {
    "llama3_1_8b": (32, 4096, 32, 8, 14336, False, 8.0),
    "llama3_1_70b": (80, 8192, 64, 8, 28672, False, 8.0),
    "llama3_2_1b": (16, 2048, 32, 8, 8192, True, 32.0),
    "llama3_2_3b": (28, 3072, 24, 8, 8192, True, 32.0),
}


def _count(build: Callable[[], torch.nn.Module]) -> int:
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


def _hf_count(model_type: str, **config: object) -> int:
    hf_config = transformers.AutoConfig.for_model(model_type, **config)
    return _count(lambda: transformers.AutoModelForCausalLM.from_config(hf_config))


@pytest.mark.parametrize("name", sorted(QWEN3_CONFIGS))
def test_qwen3_param_count_equals_transformers(name: str) -> None:
    layers, hidden, heads, kv, inter, tied = QWEN3_CONFIGS[name]
    expected = _hf_count(
        "qwen3",
        **_QWEN3,
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        tie_word_embeddings=tied,
    )
    ours = _count(getattr(models, name))
    print(f"{name}: {ours:,} parameters")
    assert ours == expected


def test_qwen3_8b_has_the_published_count() -> None:
    assert _count(models.qwen3_8b) == 8_190_735_360


@pytest.mark.parametrize("name", sorted(LLAMA_CONFIGS))
def test_llama_param_count_equals_transformers(name: str) -> None:
    layers, hidden, heads, kv, inter, tied, factor = LLAMA_CONFIGS[name]
    expected = _hf_count(
        "llama",
        vocab_size=128_256,
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        tie_word_embeddings=tied,
        rope_theta=500_000.0,
        max_position_embeddings=131_072,
        rope_scaling={**_LLAMA_SCALING, "factor": factor},
    )
    assert _count(getattr(models, name)) == expected


# Published config.json numbers of google/gemma-3-270m and -1b-pt (layers, hidden, intermediate)
# and their published parameter counts.
GEMMA3_CONFIGS = {
    "gemma3_270m": (18, 640, 2048, 268_098_176),
    "gemma3_1b": (26, 1152, 6912, 999_885_952),
}


@pytest.mark.parametrize("name", sorted(GEMMA3_CONFIGS))
def test_gemma3_param_count_equals_transformers(name: str) -> None:
    layers, hidden, inter, published = GEMMA3_CONFIGS[name]
    expected = _hf_count(
        "gemma3_text",
        vocab_size=262_144,
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
    )
    assert _count(getattr(models, name)) == expected == published
