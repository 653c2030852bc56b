"""A tiny adapted model shared by the evaluation tests: two ADEPT steps on the shipped demo."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import adept_cpt
import pytest
import torch

from adept_components.config import asset_path

BASE = Path(asset_path("demo/base_model"))
GENERAL_HELDOUT = Path(asset_path("demo/general_heldout.txt"))
DOMAIN_HELDOUT = Path(asset_path("demo/domain_heldout.txt"))
_RUNS: dict[Path, Path] = {}  # session temp dir -> run output, shared by the test modules


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the setting.

    The models here are tiny, so a second thread buys nothing; on a shared 2-core machine its
    OpenMP spin-waits made the 2-step demo run take 70 s instead of 5 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_adapted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run ``tiny_demo`` for two steps with a canary at step 2, once per test session.

    Returns:
        Path: the run's output directory (``final/`` is the adapted HF checkpoint,
        ``canary.json`` holds one record).
    """
    key = tmp_path_factory.getbasetemp()
    if key in _RUNS:
        return _RUNS[key]
    out = tmp_path_factory.mktemp("adapted_run")
    argv = [
        "--config",
        "tiny_demo",
        f"output_dir={out}",
        "max_steps=2",
        "canary.every_n_steps=2",
        "save_every_n_steps=0",
        "probe.num_samples=16",
    ]
    with one_torch_thread():
        assert adept_cpt.main(argv) == 0
    _RUNS[key] = out
    return out
