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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def keep_trainable_in_fp32(
    modules: Sequence[nn.Module], compute_dtype: torch.dtype
) -> list[nn.Module]:
    """Keep the trainable modules' weights in fp32 and compute them in ``compute_dtype``.

    Call it before activation checkpointing, FSDP2 sharding, ``torch.compile`` and building the
    optimizer (so AdamW state is fp32 too). Only parameters are cast: buffers (RoPE caches, one
    module shared by every layer) keep their dtype.

    Args:
        modules (Sequence[nn.Module]): what trains, as the run's ``TrainableSet.fp32_modules``
            gives it: the copies, the selected matrices' modules, adapters, or the whole
            model (``method=full``: torch's usual mixed precision).
        compute_dtype (torch.dtype): the run's dtype, in which matmuls keep running.

    Returns:
        list[nn.Module]: the modules now holding fp32 weights (none in an fp32 run).
    """
    if compute_dtype == torch.float32 or not modules:
        return []
    device_type = next(p for m in modules for p in m.parameters()).device.type
    for module in modules:
        with torch.no_grad():
            for param in module.parameters():
                param.data = param.data.to(torch.float32)
        # An instance attribute: nn.Module.__call__, checkpoint wrappers and FSDP2's hooks all
        # go through ``self.forward``; the state dict keeps its names.
        module.forward = _under_autocast(module.forward, device_type, compute_dtype)
    return list(modules)


def _under_autocast(
    forward: Callable[..., Any], device_type: str, dtype: torch.dtype
) -> Callable[..., Any]:
    @functools.wraps(forward)
    def autocast_forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs)

    return autocast_forward
