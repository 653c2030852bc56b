"""Model builders (Qwen3, Llama architecture), architecture records and HF key maps."""

from adept_components.models.architecture import (
    ModelArchitecture,
    architecture_of,
    model_from_hf_config,
    read_hf_config,
)
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
    "Llama3RopeScaling",
    "ModelArchitecture",
    "Qwen3Attention",
    "architecture_of",
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
