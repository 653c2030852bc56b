"""What the training loop logs beside the loss: peak memory (``log_peak_memory_stats``)."""

from __future__ import annotations

import resource
import sys

import torch
from torchtune import training


def peak_memory_stats(device: torch.device) -> dict[str, float]:
    """Peak memory since the last call, in GiB, as torchtune's recipes log it.

    On CUDA: torchtune's ``peak_memory_active``, ``peak_memory_alloc`` and
    ``peak_memory_reserved`` of this rank's GPU (the peaks are reset, so each log line holds
    its own interval's). On CPU, where torch keeps no allocator statistics:
    ``peak_memory_rss``, the process's largest resident set so far (never reset; it includes
    Python and the libraries, so it bounds the tensors' peak from above).

    Args:
        device (torch.device): the run's device.

    Returns:
        dict[str, float]: metric name -> GiB.
    """
    if device.type == "cuda":
        return training.get_memory_stats(device=device, reset_stats=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"peak_memory_rss": peak / (1024**3 if sys.platform == "darwin" else 1024**2)}
