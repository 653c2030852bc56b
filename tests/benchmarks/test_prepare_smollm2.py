"""Bad input to ``benchmarks/prepare_smollm2.py``: one line naming the file, exit 1, nothing written.

The conversion itself runs in ``tests/recipes/test_smollm2.py`` (it needs the 93 MB wheel);
these need only the ``gguf`` package.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import last_error_line, run_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "prepare_smollm2.py"


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args)


def test_missing_and_foreign_gguf_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _prepare("--out-dir", str(out), "--gguf", str(tmp_path / "nope.gguf"))
    assert done.returncode == 1 and "nope.gguf: no such file" in last_error_line(done)
    text = tmp_path / "config.json"
    text.write_text("{}")
    done = _prepare("--out-dir", str(out), "--gguf", str(text))
    assert done.returncode == 1
    assert f"{text} is not a readable GGUF file" in last_error_line(done)
    assert not out.exists()


def test_a_gguf_of_another_architecture_is_refused(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "gemma.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = tmp_path / "out"
    done = _prepare("--out-dir", str(out), "--gguf", str(path))
    assert done.returncode == 1
    assert "holds a 'gemma' model; expected 'llama'" in last_error_line(done)
    assert not out.exists()
