"""Hugging Face <-> torchtune parameter names, as each family's record says.

Qwen3 and Gemma 3 use HF's rotate-half RoPE layout, so their tensors map one to one through
the family's name table. Llama uses torchtune's interleaved RoPE, so q/k rows are permuted —
torchtune's own converter does that (a family whose table is None). Tied models carry no
``lm_head.weight`` in either format.
"""

from __future__ import annotations

import torch
from torchtune.models import convert_weights as tt_convert
from torchtune.models.convert_weights import get_mapped_key

from adept_components.models.architecture import ModelArchitecture
from adept_components.models.family import FAMILIES

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
    table = arch.family_record.hf_to_tune_keys
    try:
        if table is not None:
            return {get_mapped_key(k, table): v for k, v in state_dict.items()}
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
    family = arch.family_record
    if family.hf_to_tune_keys is not None:
        table = family.tune_to_hf_keys
        return {get_mapped_key(k, table): v for k, v in state_dict.items()}
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
        family (str): a key of ``FAMILIES`` (``"qwen3"``, ``"llama"``, ``"gemma3"``).

    Returns:
        str: e.g. ``model.layers.3.self_attn.o_proj.weight``; the input if it has no HF name.
    """
    try:
        return get_mapped_key(tune_key, FAMILIES[family].tune_to_hf_keys)
    except Exception:
        return tune_key
