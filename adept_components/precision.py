"""Trainable weights in fp32 inside a bf16 model (config ``trainable_dtype: fp32``).

Why. AdamW moves each weight by about ``lr`` per step. A bf16 weight of magnitude 0.02 sits on a
grid of 2^-13 ≈ 1.2e-4, so any move smaller than half of that (6e-5) rounds back to the old
value: at the learning rates of continual pretraining (1e-5 .. 1e-4) a pure-bf16 run silently
drops most updates. Only the copies train in ADEPT (k of L + k layers), so keeping their weights,
gradients and AdamW state in fp32 costs little memory, while the frozen layers stay in bf16.

How. The trainable modules' parameters become fp32 ("master" weights: the optimizer updates
them) and their ``forward`` runs under ``torch.autocast(dtype=bf16)``, so matmuls and attention
still run in bf16 on bf16 activations: the cast of the weights is the only extra work. Layer
outputs stay bf16 (residual adds of bf16 tensors), so the frozen layers around a copy see what
they always saw. At init a copy's residual projections are exactly zero in either dtype, so the
expanded model still computes the base model. Checkpoints are written in the run's dtype; the
fp32 weights go into the training state so that resume continues from them exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def keep_trainable_in_fp32(
    model: nn.Module,
    trainable_layers: list[int] | None,
    compute_dtype: torch.dtype,
    trainable_parameters: list[str] | None = None,
) -> list[nn.Module]:
    """Keep the trainable layers' weights in fp32 and compute them in ``compute_dtype``.

    Call it before activation checkpointing, FSDP2 sharding, ``torch.compile`` and building the
    optimizer (so AdamW state is fp32 too). Only parameters are cast: buffers (RoPE caches, one
    module shared by every layer) keep their dtype.

    Args:
        model (nn.Module): a torchtune ``TransformerDecoder`` after ``freeze_all_but``.
        trainable_layers (list[int] | None): positions in ``model.layers`` that train; None
            when every parameter trains (``method=full``): the whole model is then kept in fp32
            and run under autocast, torch's usual mixed precision.
        compute_dtype (torch.dtype): the run's dtype, in which matmuls keep running.
        trainable_parameters (list[str] | None): when only some matrices train (Spectrum):
            their names; the modules holding them are kept instead of whole layers.

    Returns:
        list[nn.Module]: the modules now holding fp32 weights.
    """
    if compute_dtype == torch.float32:
        return []
    if trainable_parameters is not None:
        modules = [model.get_submodule(name.rsplit(".", 1)[0]) for name in trainable_parameters]
    elif trainable_layers is None:
        modules = [model]
    else:
        modules = [model.layers[i] for i in trainable_layers]
    device_type = next(model.parameters()).device.type
    for module in modules:
        with torch.no_grad():
            for param in module.parameters():
                param.data = param.data.to(torch.float32)
        # An instance attribute: nn.Module.__call__, checkpoint wrappers and FSDP2's hooks all
        # go through ``self.forward``; the state dict keeps its names.
        module.forward = _under_autocast(module.forward, device_type, compute_dtype)
    return modules


def _under_autocast(
    forward: Callable[..., Any], device_type: str, dtype: torch.dtype
) -> Callable[..., Any]:
    @functools.wraps(forward)
    def autocast_forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs)

    return autocast_forward
