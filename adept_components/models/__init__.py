"""Model builders (Qwen3, Llama architecture, Gemma 3), family records, architectures, HF key maps."""

from adept_components.models.architecture import (
    ModelArchitecture,
    architecture_of,
    model_from_hf_config,
    read_hf_config,
)
from adept_components.models.family import FAMILIES, ModelFamily, family_of
from adept_components.models.gemma3 import Gemma3Attention, gemma3, gemma3_1b, gemma3_270m
from adept_components.models.llama3 import (
    Llama3RopeScaling,
    llama,
    llama3_1_8b,
    llama3_1_70b,
    llama3_2_1b,
    llama3_2_3b,
)
from adept_components.models.qwen3 import (
    Qwen3Attention,
    qwen3,
    qwen3_0_6b,
    qwen3_1_7b,
    qwen3_4b,
    qwen3_8b,
    qwen3_14b,
    qwen3_32b,
)

__all__ = [
    "FAMILIES",
    "Gemma3Attention",
    "Llama3RopeScaling",
    "ModelFamily",
    "ModelArchitecture",
    "Qwen3Attention",
    "architecture_of",
    "family_of",
    "gemma3",
    "gemma3_1b",
    "gemma3_270m",
    "llama",
    "llama3_1_8b",
    "llama3_1_70b",
    "llama3_2_1b",
    "llama3_2_3b",
    "model_from_hf_config",
    "qwen3",
    "qwen3_0_6b",
    "qwen3_1_7b",
    "qwen3_4b",
    "qwen3_8b",
    "qwen3_14b",
    "qwen3_32b",
    "read_hf_config",
]
