"""Build a decoder on the meta device and give it real weights, without a random init."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchtune.modules import TransformerDecoder

from adept_components.checkpointing.hf_checkpointer import check_state_dict_matches


def materialize(
    build: Callable[[], TransformerDecoder],
    state_dict: dict[str, torch.Tensor],
    family: str,
    device: torch.device,
    dtype: torch.dtype,
) -> TransformerDecoder:
    """Build on the meta device, check names and shapes, then take the weights in place.

    An 8B model built normally would be randomly initialised first (minutes, and twice the
    memory); on the meta device it costs nothing, and ``load_state_dict(assign=True)`` makes
    the loaded tensors the parameters. RoPE caches are buffers outside the state dict, so they
    are recomputed on ``device``.

    Args:
        build (Callable[[], TransformerDecoder]): builds the (possibly expanded) decoder.
        state_dict (dict[str, torch.Tensor]): torchtune-named weights for every parameter.
        family (str): the model family, named in a mismatch error (``qwen3``, ``llama``).
        device (torch.device): where the weights go.
        dtype (torch.dtype): the weights' dtype.

    Returns:
        TransformerDecoder: the model with ``state_dict``'s weights.

    Raises:
        ValueError: a missing or unexpected tensor, or a shape that does not match the model.
    """
    with torch.device("meta"):
        model = build()
    check_state_dict_matches(model, state_dict, family)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
    model.load_state_dict(state, assign=True)
    with device:
        for module in model.modules():
            if hasattr(module, "rope_init"):
                module.rope_init()
    return model
