"""Hugging Face <-> torchtune parameter names for Qwen3 and Llama 3.

Qwen3 uses HF's rotate-half RoPE layout, so its tensors map one to one (plus the per-head
``q_norm``/``k_norm`` that torchtune's Qwen2 map lacks). Llama uses torchtune's interleaved
RoPE, so q/k rows are permuted — torchtune's own converter does that. Tied models carry no
``lm_head.weight`` in either format.
"""

from __future__ import annotations

import torch
from torchtune.models import convert_weights as tt_convert
from torchtune.models.convert_weights import get_mapped_key

from adept_components._torchtune import LLAMA_FROM_HF, QWEN2_FROM_HF
from adept_components.models.architecture import ModelArchitecture

_QWEN3_FROM_HF: dict[str, str | None] = {
    **{k: v for k, v in QWEN2_FROM_HF.items() if not k.endswith(".bias")},
    "model.layers.{}.self_attn.q_norm.weight": "layers.{}.attn.q_norm.scale",
    "model.layers.{}.self_attn.k_norm.weight": "layers.{}.attn.k_norm.scale",
}
_QWEN3_TO_HF = {v: k for k, v in _QWEN3_FROM_HF.items() if v is not None}
_TIED_HF_KEY = "lm_head.weight"


def hf_to_tune(
    state_dict: dict[str, torch.Tensor], arch: ModelArchitecture
) -> dict[str, torch.Tensor]:
    """Convert an HF state dict to torchtune names (and Llama's RoPE row order).

    Args:
        state_dict (dict): HF tensors.
        arch (ModelArchitecture): the model's numbers.

    Returns:
        dict: torchtune tensors; ``lm_head.weight`` is dropped for tied models.

    Raises:
        ValueError: a key that is not a parameter of this family.
    """
    state_dict = {
        k: v
        for k, v in state_dict.items()
        if "rotary_emb.inv_freq" not in k and not (arch.tie_word_embeddings and k == _TIED_HF_KEY)
    }
    try:
        if arch.family == "qwen3":
            return {get_mapped_key(k, _QWEN3_FROM_HF): v for k, v in state_dict.items()}
        return tt_convert.hf_to_tune(
            state_dict,
            num_heads=arch.num_heads,
            num_kv_heads=arch.num_kv_heads,
            dim=arch.embed_dim,
            head_dim=arch.head_dim,
        )
    except Exception as e:  # torchtune raises a bare Exception for unknown keys
        raise ValueError(f"checkpoint tensor name not understood for {arch.family}: {e}") from None


def tune_to_hf(
    state_dict: dict[str, torch.Tensor], arch: ModelArchitecture
) -> dict[str, torch.Tensor]:
    """Convert a torchtune state dict to HF names (and HF's RoPE row order for Llama).

    Args:
        state_dict (dict): torchtune tensors.
        arch (ModelArchitecture): the model's numbers.

    Returns:
        dict: HF tensors, ready for ``save_pretrained``-compatible safetensors.
    """
    if arch.family == "qwen3":
        return {get_mapped_key(k, _QWEN3_TO_HF): v for k, v in state_dict.items()}
    return tt_convert.tune_to_hf(
        state_dict,
        num_heads=arch.num_heads,
        num_kv_heads=arch.num_kv_heads,
        dim=arch.embed_dim,
        head_dim=arch.head_dim,
    )


def hf_name(tune_key: str, family: str) -> str:
    """The HF name of one torchtune parameter name, for error messages.

    Args:
        tune_key (str): e.g. ``layers.3.attn.output_proj.weight``.
        family (str): ``"qwen3"`` or ``"llama"``.

    Returns:
        str: e.g. ``model.layers.3.self_attn.o_proj.weight``; the input if it has no HF name.
    """
    table = _QWEN3_TO_HF if family == "qwen3" else {v: k for k, v in LLAMA_FROM_HF.items()}
    try:
        return get_mapped_key(tune_key, table)
    except Exception:
        return tune_key
