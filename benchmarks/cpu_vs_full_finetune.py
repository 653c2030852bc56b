"""Benchmark: ``tune run adept_cpt`` (method=adept) against torchtune's own full fine-tuning recipe.

Four real recipe runs on CPU, each a separate ``tune run`` process, on one model and the same
data: torchtune 0.6.1's ``full_finetune_single_device`` (the baseline), the same with
activation checkpointing (as 18 of its 20 shipped full-finetune configs set it), our recipe with
``method=full`` (every weight trains, for reference) and our recipe with ``method=adept``
(stage 1 expands ``k`` layers with function-preserving copies, stage 2 trains only the copies,
one AdamW param group per unit). Everything else is equal: fp32, no activation checkpointing
(except in that one run), no compile, the same AdamW, schedule, clipping and chunked loss.

The default shape has 28 layers and ``k = 4``: the depth and ``k`` of the ``qwen3_1_7b_*``
configs (Qwen3-4B/8B: 4 of 36; ``llama3_1_8b_*``: 8 of 32, the ratio of ``--layers 16``), at
width 512 so that it runs on a laptop CPU.

Which layers are copied decides the cost: the backward pass runs from the top down to the
lowest copy. On random weights the stage-1 probe picks arbitrary layers (``--probe``; one run
picked base layer 0, so the backward went through almost the whole model), so by default the
copies sit where the paper found them on trained Qwen3 models (``paper_like_sources``: from
72 % depth up, base layers 12-15 of 16) and ``expansion.layers`` names them.

The model. torchtune 0.6.1 has no Qwen3, so the model is one both recipes build: a Llama 3
architecture (GQA, SwiGLU, RMSNorm, RoPE), random init, written as a Hugging Face directory
(``config.json`` + ``model.safetensors``) by our ``ModelArchitecture(family="llama")``.
torchtune reads it with ``FullModelHFCheckpointer(model_type=LLAMA3)`` into
``torchtune.models.llama3.llama3(...)`` with the same numbers; our recipe reads it with our
``HFCheckpointer`` into the same torchtune builder. Both load the same weights (their step-1
losses agree, see the table).

The data. One Qwen-format byte-level BPE (``train_qwen_tokenizer``; vocab = the model's) is the
tokenizer of all three runs: torchtune's recipe takes any tokenizer ``_component_``, and ours is
torchtune's ``Qwen2_5Tokenizer``. The corpus is ``adept_components/assets/demo/domain.txt``,
packed by our ``packed_text_dataset`` (documents + end-of-text, concatenated, cut into
``seq_len`` chunks: no padding). torchtune's recipe gets the very same chunks through
``recipe_ordered_chunks`` below (a dataset ``_component_``, ``shuffle: false``) in the order our
recipe draws them, so step ``n`` of every run trains on the same ``batch_size`` chunks.

What is timed. Each recipe logs every step to its ``DiskLogger`` file: ours
``tokens_per_second`` = ``b·(s−1)`` supervised tokens / the wall time since the previous step
was logged; torchtune's ``tokens_per_second_per_gpu`` = ``b·s`` label tokens (its count, taken
before the label shift) / the same interval. Step time = that token count / that rate: the wall
time of one optimizer step, data fetch + forward + loss + backward + clipping + AdamW + LR
schedule, with nothing else inside (no checkpoint, canary or unit refresh falls within the timed
steps). The table gives the median over the steps after ``--warmup``, over all ``--repeats``.

What is measured for memory. Peak resident set size of each ``tune run`` process: the kernel's
``ru_maxrss`` of that one process, from ``os.wait4`` in a small launcher process (exact, no
sampling; ``getrusage(RUSAGE_CHILDREN)`` would give the largest of all children so far, and a
child forked straight from this script would be charged this script's own RSS). It covers the
whole run, loading included; loading holds at most two copies of the weights (~0.5 GiB), below
the training peak. ``above imports`` subtracts the peak RSS of a process that only imports
torch, torchtune and the recipe module.

Run from the repository root (nothing is downloaded; about 11 minutes on 2 quiet CPU cores)::

    python benchmarks/cpu_vs_full_finetune.py
    python benchmarks/cpu_vs_full_finetune.py --repeats 3 --threads 1 --layers 16

It prints the command and its provenance (commit, torch, CPU, threads, date), the setup, a
markdown table with the runs and the ratios, each run's own numbers, and the first-principles
estimates of compute and memory beside them; ``--json`` also writes them, provenance included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
import torch
from torch.utils.data import Dataset

REPO = common.REPO
DEMO = REPO / "adept_components" / "assets" / "demo"
RUNS = ("torchtune_full", "torchtune_full_ac", "adept_cpt_full", "adept_cpt_adept")
LABELS = {
    "torchtune_full": "torchtune `full_finetune_single_device`",
    "torchtune_full_ac": "torchtune `full_finetune_single_device` + activation ckpt",
    "adept_cpt_full": "adept_cpt `method=full`",
    "adept_cpt_adept": "adept_cpt `method=adept`",
}
_QWEN_SPECIAL_TOKENS = 5  # train_qwen_tokenizer appends <|endoftext|> and four chat tokens
_SEED = 0


# --------------------------------------------------------------------- torchtune-side dataset


class _TokensAndLabels(Dataset):
    """``{"tokens", "labels"}`` rows (what torchtune's collators take) over packed chunks."""

    def __init__(self, chunks: Dataset, order: list[int]) -> None:
        self.chunks = chunks
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        tokens = self.chunks[self.order[index]].tolist()  # [s]
        return {"tokens": tokens, "labels": list(tokens)}


def recipe_ordered_chunks(tokenizer: Any, source: str, max_seq_len: int, seed: int) -> Dataset:
    """adept_cpt's packed chunks of ``source``, in the order adept_cpt draws them (epoch 0).

    For torchtune's ``full_finetune_single_device`` (``dataset._component_``, ``shuffle:
    false``): its sequential sampler then hands out the same chunks per step as
    adept_cpt, which walks ``epoch_order(n, seed, epoch)``. Labels equal tokens; the recipe
    shifts them itself.

    Args:
        tokenizer (Any): the run's tokenizer (torchtune passes it first).
        source (str): the corpus, as in adept_cpt's ``dataset.source``.
        max_seq_len (int): chunk length.
        seed (int): adept_cpt's ``seed``.

    Returns:
        Dataset: rows ``{"tokens": [...], "labels": [...]}``, all ``max_seq_len`` long.
    """
    from adept_components.data import epoch_order, packed_text_dataset

    chunks = packed_text_dataset(tokenizer, source, max_seq_len)
    return _TokensAndLabels(chunks, epoch_order(len(chunks), seed, epoch=0))


# ------------------------------------------------------------------------------ the shapes


@dataclasses.dataclass(frozen=True)
class Shape:
    """The benchmark's model and batch numbers (one place, used by every estimate)."""

    layers: int
    dim: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    seq_len: int
    batch_size: int
    k: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def layer_matmul_params(self) -> int:
        """q, k, v, output projection, w1, w2, w3."""
        d = self.dim
        return 2 * d * d + 2 * d * self.kv_dim + 3 * d * self.intermediate

    @property
    def layer_params(self) -> int:
        return self.layer_matmul_params + 2 * self.dim  # + the two RMSNorm scales

    @property
    def outside_layers_params(self) -> int:
        return 2 * self.vocab * self.dim + self.dim  # embedding, untied head, final norm

    def params(self, num_layers: int) -> int:
        return num_layers * self.layer_params + self.outside_layers_params


def architecture(shape: Shape) -> Any:
    from adept_components.models import ModelArchitecture

    return ModelArchitecture(
        family="llama",
        vocab_size=shape.vocab,
        num_layers=shape.layers,
        num_heads=shape.heads,
        num_kv_heads=shape.kv_heads,
        embed_dim=shape.dim,
        intermediate_dim=shape.intermediate,
        head_dim=shape.head_dim,
        max_seq_len=shape.seq_len,
        norm_eps=1e-5,
        rope_base=500_000.0,
        tie_word_embeddings=False,
    )


# --------------------------------------------------------------------------- the inputs


def write_base_model(shape: Shape, out_dir: Path) -> None:
    """Random-init Llama-3-architecture HF directory with a Qwen-format BPE tokenizer."""
    common.use_tools()
    from build_demo import train_qwen_tokenizer

    tokenizer_dir = out_dir.parent / f"{out_dir.name}_tokenizer"
    texts = [(DEMO / "general.txt").read_text(), (DEMO / "domain.txt").read_text()]
    n_ids = train_qwen_tokenizer(texts, shape.vocab - _QWEN_SPECIAL_TOKENS, tokenizer_dir)
    if n_ids != shape.vocab:
        raise RuntimeError(f"the tokenizer has {n_ids} ids, the model {shape.vocab}")
    arch = architecture(shape)
    torch.manual_seed(_SEED)
    model = arch.build()
    with torch.no_grad():  # torchtune leaves nn.Embedding at N(0, 1)
        model.tok_embeddings.weight.normal_(0.0, 0.02)
    config = {"bos_token_id": None, "torch_dtype": "float32"}
    common.write_hf_model(out_dir, model, arch, config, files=sorted(tokenizer_dir.iterdir()))


def write_configs(shape: Shape, args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """One YAML for adept_cpt (both methods) and one for torchtune's recipe."""
    from omegaconf import OmegaConf

    from adept_components.config import load_config

    base, corpus = work / "base_model", DEMO / "domain.txt"
    common = {  # identical for all runs
        "seed": _SEED,
        "batch_size": shape.batch_size,
        "gradient_accumulation_steps": 1,
        "clip_grad_norm": 1.0,
        "log_every_n_steps": 1,
        "compile": False,
        "enable_activation_checkpointing": False,
    }
    optimizer = {"_component_": "torch.optim.AdamW", "lr": 3e-4, "weight_decay": 0.01}
    scheduler = {
        "_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
        "num_warmup_steps": 2,
    }
    loss = {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"}
    tokenizer = {
        "_component_": "adept_components.models.tokenizers.qwen3_tokenizer",
        "path": str(base),
        "max_seq_len": shape.seq_len,
    }

    overrides = {
        **common,
        "output_dir": str(work / "runs" / "adept_cpt"),
        "device": "cpu",
        "dtype": "fp32",
        "checkpointer.checkpoint_dir": str(base),
        "model.max_seq_len": shape.seq_len,
        "tokenizer.max_seq_len": shape.seq_len,
        "dataset.source": str(corpus),
        "dataset.max_seq_len": shape.seq_len,
        "max_steps": args.steps,
        "expansion.num_layers": shape.k,
        "expansion.layers": args.copy_sources,
        "probe.source": str(DEMO / "general.txt"),
        "probe.num_samples": args.probe_samples,
        "probe.max_seq_len": 128,
        "probe_batch_size": args.probe_samples,
        # No refresh inside the timed steps (refresh_cost.py measures its share: ~1.6 % at
        # the default interval of 500); no canary and no intermediate checkpoint either.
        "unit_tuning.refresh_every": args.steps,
        "canary.every_n_steps": 0,
        "save_every_n_steps": 0,
    }
    cfg = load_config(["--config", "tiny_demo"])
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    for key, value in (("optimizer", optimizer), ("lr_scheduler", scheduler), ("loss", loss)):
        cfg[key] = value
    adept_yaml = work / "adept_cpt.yaml"
    OmegaConf.save(cfg, adept_yaml)

    arch = architecture(shape)
    torchtune_cfg = {
        **common,
        "output_dir": str(work / "runs" / "torchtune_full"),
        "device": "cpu",
        "dtype": "fp32",
        "model": {
            "_component_": "torchtune.models.llama3.llama3",
            "vocab_size": arch.vocab_size,
            "num_layers": arch.num_layers,
            "num_heads": arch.num_heads,
            "num_kv_heads": arch.num_kv_heads,
            "embed_dim": arch.embed_dim,
            "max_seq_len": shape.seq_len,
            "intermediate_dim": arch.intermediate_dim,
            "norm_eps": arch.norm_eps,
            "rope_base": arch.rope_base,
        },
        "tokenizer": tokenizer,
        "checkpointer": {
            "_component_": "torchtune.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(base),
            "checkpoint_files": ["model.safetensors"],
            "model_type": "LLAMA3",
            "output_dir": "${output_dir}",
        },
        "resume_from_checkpoint": False,
        "dataset": {
            "_component_": "cpu_vs_full_finetune.recipe_ordered_chunks",
            "source": str(corpus),
            "max_seq_len": shape.seq_len,
            "seed": _SEED,
        },
        "shuffle": False,
        "epochs": 1,
        "max_steps_per_epoch": args.steps,
        "optimizer": optimizer,
        "optimizer_in_bwd": False,
        "lr_scheduler": scheduler,
        "loss": loss,
        "enable_activation_offloading": False,
        "metric_logger": {
            "_component_": "torchtune.training.metric_logging.DiskLogger",
            "log_dir": "${output_dir}/logs",
        },
        "log_peak_memory_stats": False,
    }
    torchtune_yaml = work / "torchtune_full.yaml"
    OmegaConf.save(OmegaConf.create(torchtune_cfg), torchtune_yaml)
    return {"adept_cpt": adept_yaml, "torchtune": torchtune_yaml}


# ------------------------------------------------------------------------------- the runs


@dataclasses.dataclass
class Run:
    """One ``tune run`` process and what it logged."""

    name: str
    repeat: int
    command: list[str]
    wall_s: float = 0.0
    peak_rss: int = 0  # bytes
    step_times: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    load_before: float = 0.0
    output_dir: Path | None = None


def command_for(name: str, configs: dict[str, Path], output_dir: Path) -> list[str]:
    if name.startswith("torchtune_full"):
        return [
            "tune",
            "run",
            "full_finetune_single_device",
            "--config",
            str(configs["torchtune"]),
            f"output_dir={output_dir}",
            f"enable_activation_checkpointing={name == 'torchtune_full_ac'}",
        ]
    method = name.removeprefix("adept_cpt_")
    return [
        "tune",
        "run",
        "adept_cpt",
        "--config",
        str(configs["adept_cpt"]),
        f"method={method}",
        f"output_dir={output_dir}",
    ]


def child_env(threads: int | None = None) -> dict[str, str]:
    """This folder on PYTHONPATH, so torchtune can import ``recipe_ordered_chunks``.

    ``threads`` pins torch's intra-op threads (``OMP_NUM_THREADS``). With 2 threads on 2 cores
    and another job on one of them, every parallel region waits for the descheduled thread and
    small steps slow down 10x or more, erratically; 1 thread degrades gracefully.
    """
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


# Runs one command and reports its exit status, wall time and peak RSS (KiB). It is a small
# process (``python -S``, stdlib only) between this script and the measured one because Linux
# charges a child's ``ru_maxrss`` with the RSS of the process it was forked (or vforked) from,
# as it was at exec: launched straight from this script, which holds torch and the base model,
# every run would read at least this script's ~0.9 GiB.
_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
with open(sys.argv[1], "w") as log:
    proc = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
proc.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps([proc.returncode, time.perf_counter() - start, usage.ru_maxrss]))
"""


def run_process(
    command: list[str], log_path: Path, threads: int | None = None
) -> tuple[int, float, int]:
    """Run ``command``; return its exit code, wall time and peak RSS in bytes.

    The peak is the kernel's ``ru_maxrss`` of that one process, from ``os.wait4`` in a small
    launcher (see ``_LAUNCHER``): exact, no sampling, and unlike
    ``getrusage(RUSAGE_CHILDREN)`` not the largest of all children waited for so far.
    """
    out = subprocess.run(
        [sys.executable, "-S", "-c", _LAUNCHER, str(log_path), *command],
        capture_output=True,
        text=True,
        env=child_env(threads),
        cwd=REPO,
        check=True,
    )
    status, wall_s, maxrss_kib = json.loads(out.stdout.strip().splitlines()[-1])
    return status, wall_s, maxrss_kib * 1024  # KiB on Linux


def import_baseline_rss(work: Path) -> int:
    """Peak RSS of a process that only imports what every ``tune run`` here imports."""
    code = "import torch, torchtune.training, torchtune.modules, torchtune.models.llama3, adept_cpt"
    status, _, rss = run_process([sys.executable, "-c", code], work / "baseline.log")
    if status != 0:
        raise RuntimeError(f"import baseline failed, see {work / 'baseline.log'}")
    return rss


def execute(
    name: str,
    repeat: int,
    configs: dict[str, Path],
    shape: Shape,
    work: Path,
    threads: int | None,
) -> Run:
    output_dir = work / "runs" / f"{name}-r{repeat}"
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    run = Run(name, repeat, command_for(name, configs, output_dir), output_dir=output_dir)
    run.load_before = os.getloadavg()[0]
    log_path = work / "runs" / f"{name}-r{repeat}.log"
    status, run.wall_s, run.peak_rss = run_process(run.command, log_path, threads)
    if status != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(run.command)} exited with {status}:\n{tail}")
    # torchtune counts labels before its shift (b·s); adept_cpt counts supervised targets after
    # it (b·(s−1)): each rate is divided back by its own count.
    tokens = (
        shape.tokens
        if name.startswith("torchtune_full")
        else shape.batch_size * (shape.seq_len - 1)
    )
    run.step_times, run.losses = common.step_times(
        common.read_metric_log(output_dir / "logs"), tokens
    )
    return run


def wait_for_quiet(max_load: float, timeout_s: float) -> float:
    """Wait until the 1-minute load average is below ``max_load`` (or time out); return it."""
    deadline = time.monotonic() + timeout_s
    load = os.getloadavg()[0]
    while load > max_load and time.monotonic() < deadline:
        print(f"  load average {load:.2f} > {max_load}: waiting", flush=True)
        time.sleep(30)
        load = os.getloadavg()[0]
    return load


# --------------------------------------------------------------------- first principles


def paper_like_sources(num_layers: int, k: int) -> list[int]:
    """``k`` consecutive base layers from 72 % depth up (at least ending at the last layer).

    The paper's Qwen3-8B selection is 26, 28, 29, 30 of 36 layers: the lowest copy, which sets
    how deep the backward pass goes, follows layer 26, at 72 % depth (Qwen3-1.7B: 22 of 28,
    79 %). On random weights stage 1 would choose arbitrary layers (``--probe``), so the
    benchmark places the copies where the paper found them on trained models.
    """
    lowest = min(round(0.72 * num_layers), num_layers - k)
    return list(range(lowest, lowest + k))


def copy_positions(sources: list[int]) -> list[int]:
    return [s + j + 1 for j, s in enumerate(sorted(sources))]


def estimates(shape: Shape, sources: list[int]) -> dict[str, dict[str, float]]:
    """Per-step compute (FLOPs) and peak training memory (bytes) of full and ADEPT, fp32.

    Compute: matmul FLOPs per token from ``common.flops_per_token`` (``adept-cpt plan`` counts
    the same: ``tests/test_planning.py``), times the step's tokens: full over L layers (plus the
    recompute of every layer's forward with activation checkpointing), ADEPT over L + k layers
    with only the k copies training, the backward reaching down to the lowest copy.
    Memory (bytes):
      weights 4·N_model; gradients 4·N_train; AdamW 8·N_train (exp_avg, exp_avg_sq);
      saved activations per token: a trained layer (10·d + 4·i) floats (its input, norm
      output, q, k, v after GQA expansion, attention output, residual, MLP norm output, w1 and
      w3 outputs, silu, their product), a frozen layer above a copy (6·d + 3·i) (a frozen
      matmul keeps no input), a layer below the lowest copy nothing; the head 2·V (fp32 logits
      and log-probabilities). Counted with ``saved_tensors_hooks`` on this torchtune Llama.
    """
    d, i, V, L, k = shape.dim, shape.intermediate, shape.vocab, shape.layers, shape.k
    numbers = common.LayerNumbers(shape.layer_matmul_params, V * d, shape.heads * shape.head_dim)
    full_flops = common.flops_per_token(numbers, L, shape.seq_len, activation_checkpointing=True)
    adept_flops = common.flops_per_token(numbers, L + k, shape.seq_len, copy_positions(sources))
    p = min(copy_positions(sources))
    tokens = shape.tokens
    trained_act, frozen_act, head_act = (10 * d + 4 * i) * 4, (6 * d + 3 * i) * 4, 2 * V * 4
    n_full, n_adept = shape.params(L), shape.params(L + k)
    n_copies = k * shape.layer_params
    above = L + k - p  # layers at positions p .. L+k-1: the k copies and the frozen ones between
    full = {
        "flops": tokens * full_flops.model,
        "weights": 4 * n_full,
        "grads": 4 * n_full,
        "adamw": 8 * n_full,
        "activations": tokens * (L * trained_act + head_act),
        "trainable": n_full,
        "params": n_full,
    }
    adept = {
        "flops": tokens * adept_flops.model,
        "weights": 4 * n_adept,
        "grads": 4 * n_copies,
        "adamw": 8 * n_copies,
        "activations": tokens * (k * trained_act + (above - k) * frozen_act + head_act),
        "trainable": n_copies,
        "params": n_adept,
    }
    # Activation checkpointing (torchtune wraps every layer): each layer keeps only its input
    # (d floats per token), one layer's activations live again while it is recomputed, and
    # every layer's forward runs twice.
    full_ac = {
        **full,
        "flops": tokens * (full_flops.model + full_flops.recompute),
        "activations": tokens * (L * d * 4 + trained_act + head_act),
    }
    for e in (full, full_ac, adept):
        e["memory"] = e["weights"] + e["grads"] + e["adamw"] + e["activations"]
        # AdamW + clipping touch ~40 bytes per trainable parameter (read p, g, m, v; write
        # p, m, v; read and scale g): memory-bound, not in the FLOP count.
        e["optimizer_bytes"] = 40 * e["trainable"]
    return {"full": full, "full_ac": full_ac, "adept": adept}


# ------------------------------------------------------------------------------- report


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def summarise(runs: list[Run], warmup: int, baseline: int) -> dict[str, dict[str, float]]:
    out = {}
    for name in RUNS:
        mine = [r for r in runs if r.name == name]
        if not mine:
            continue
        timed = [t for r in mine for t in r.step_times[warmup:]]
        out[name] = {
            "step_s": statistics.median(timed),
            "step_min_s": min(timed),
            "step_max_s": max(timed),
            "num_timed": len(timed),
            "peak_rss": max(r.peak_rss for r in mine),
            "peak_rss_above_imports": max(r.peak_rss for r in mine) - baseline,
            "wall_s": statistics.median(r.wall_s for r in mine),
            "loss_1": mine[0].losses[0],
            "loss_last": mine[0].losses[-1],
        }
    return out


def estimate_kind(name: str) -> str:
    """Which first-principles estimate a run is compared with."""
    if name.endswith("adept"):
        return "adept"
    return "full_ac" if name.endswith("_ac") else "full"


def print_report(
    shape: Shape,
    args: argparse.Namespace,
    runs: list[Run],
    baseline: int,
    sources: list[int] | None,
) -> dict[str, Any]:
    summary = summarise(runs, args.warmup, baseline)
    est = estimates(shape, sources) if sources else None
    ref = summary.get("torchtune_full")
    print()
    print(
        f"Llama-3 architecture, random init, fp32, CPU "
        f"({args.threads or torch.get_num_threads()} threads): "
        f"{shape.layers} layers, dim {shape.dim}, MLP {shape.intermediate}, "
        f"{shape.heads} heads / {shape.kv_heads} KV heads, vocab {shape.vocab}; "
        f"batch {shape.batch_size} x {shape.seq_len} tokens; AdamW (lr 3e-4, wd 0.01), cosine "
        f"with 2 warm-up steps, clip 1.0, CEWithChunkedOutputLoss; {args.steps} steps per run, "
        f"first {args.warmup} not timed; {args.repeats} run(s) of each, alternating."
    )
    if sources:
        print(
            f"ADEPT: k={shape.k} copies of base layers {sources} at positions "
            f"{copy_positions(sources)} of {shape.layers + shape.k}"
            + (
                " (chosen by the stage-1 mask-out probe on random weights)"
                if args.probe
                else " (given: the paper's depth, see paper_like_sources)"
            )
        )
    print(f"Import baseline (torch + torchtune + adept_cpt): {gib(baseline)} GiB peak RSS")
    print()
    names = [n for n in RUNS if n in summary]
    print("| | " + " | ".join(LABELS[n] for n in names) + " |")
    print("|---|" + "---:|" * len(names))

    def row(label: str, cell) -> None:
        print(f"| {label} | " + " | ".join(cell(n) for n in names) + " |")

    kind = {n: estimate_kind(n) for n in names}
    if est:
        row(
            "trainable / total parameters",
            lambda n: (
                f"{est[kind[n]]['trainable'] / 1e6:.1f}M / {est[kind[n]]['params'] / 1e6:.1f}M"
            ),
        )
    row(
        "step time, median (min–max) [s]",
        lambda n: (
            f"{summary[n]['step_s']:.3f} ({summary[n]['step_min_s']:.3f}–"
            f"{summary[n]['step_max_s']:.3f})"
        ),
    )
    row("tokens / s (b·s per step)", lambda n: f"{shape.tokens / summary[n]['step_s']:.0f}")
    row("peak RSS [GiB]", lambda n: gib(summary[n]["peak_rss"]))
    row("peak RSS above imports [GiB]", lambda n: gib(summary[n]["peak_rss_above_imports"]))
    row(
        "loss at step 1 / last step",
        lambda n: f"{summary[n]['loss_1']:.4f} / {summary[n]['loss_last']:.4f}",
    )
    row("run wall time (median) [s]", lambda n: f"{summary[n]['wall_s']:.0f}")
    if ref:
        row("step time vs torchtune full", lambda n: f"{summary[n]['step_s'] / ref['step_s']:.2f}x")
        row(
            "peak RSS vs torchtune full",
            lambda n: f"{summary[n]['peak_rss'] / ref['peak_rss']:.2f}x",
        )
        if ref["peak_rss_above_imports"] > 0:
            row(
                "peak RSS above imports vs torchtune full",
                lambda n: (
                    f"{summary[n]['peak_rss_above_imports'] / ref['peak_rss_above_imports']:.2f}x"
                ),
            )
    if est:
        row("estimate: FLOPs per step", lambda n: f"{est[kind[n]]['flops'] / 1e9:.0f} G")
        row(
            "estimate: compute vs full",
            lambda n: f"{est[kind[n]]['flops'] / est['full']['flops']:.2f}x",
        )
        row(
            "estimate: weights + grads + AdamW + activations [GiB]",
            lambda n: (
                f"{gib(est[kind[n]]['weights'])} + {gib(est[kind[n]]['grads'])} + "
                f"{gib(est[kind[n]]['adamw'])} + {gib(est[kind[n]]['activations'])} = "
                f"{gib(est[kind[n]]['memory'])}"
            ),
        )
        row(
            "estimate: training memory vs full",
            lambda n: f"{est[kind[n]]['memory'] / est['full']['memory']:.2f}x",
        )
    print()
    print("| run | repeat | load avg before | wall [s] | peak RSS [GiB] | median step [s] |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r.name} | {r.repeat} | {r.load_before:.2f} | {r.wall_s:.0f} | "
            f"{gib(r.peak_rss)} | {statistics.median(r.step_times[args.warmup :]):.3f} |"
        )
    return {"summary": summary, "estimates": est, "copy_sources": sources}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28, help="base model layers")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1536, help="MLP width")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--k", type=int, default=4, help="ADEPT copies")
    parser.add_argument(
        "--copy-sources",
        type=int,
        nargs="+",
        default=None,
        help="base layers to copy (default: k layers from 72%% depth up, as the paper's Qwen3-8B)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="let stage 1's mask-out probe choose the layers (on random weights: arbitrary)",
    )
    parser.add_argument("--probe-samples", type=int, default=16, help="stage-1 probe size")
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="first steps not timed")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each recipe")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument(
        "--workdir",
        type=Path,
        default=common.CACHE_DIR / "cpu_vs_full_finetune",
        help="base model, configs and runs (emptied first)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per run (default: torch's)"
    )
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for a quieter machine")
    parser.add_argument("--max-wait", type=float, default=600.0, help="seconds, per run")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.warmup >= args.steps:
        parser.error(f"--warmup {args.warmup} leaves no timed step of --steps {args.steps}")
    if args.probe and args.copy_sources:
        parser.error("--probe and --copy-sources exclude each other")
    if not args.probe and not args.copy_sources:
        args.copy_sources = paper_like_sources(args.layers, args.k)

    provenance = common.provenance([__file__, *argv])
    print(f"$ {provenance['command']}\n{common.provenance_line(provenance)}")
    shape = Shape(
        layers=args.layers,
        dim=args.dim,
        intermediate=args.intermediate,
        vocab=args.vocab,
        heads=args.heads,
        kv_heads=args.kv_heads,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        k=args.k,
    )
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "runs").mkdir(parents=True)
    start = time.perf_counter()
    write_base_model(shape, work / "base_model")
    configs = write_configs(shape, args, work)
    print(f"Base model and configs in {work} ({time.perf_counter() - start:.0f}s)")
    baseline = import_baseline_rss(work)

    runs: list[Run] = []
    for repeat in range(args.repeats):
        # Rotate the order each round, so no recipe always runs first (or after the same one).
        names = args.runs[repeat % len(args.runs) :] + args.runs[: repeat % len(args.runs)]
        for name in names:
            wait_for_quiet(args.max_load, args.max_wait)
            print(f"  {name} (repeat {repeat}) ...", flush=True)
            run = execute(name, repeat, configs, shape, work, args.threads)
            print(
                f"    {run.wall_s:.0f}s, peak RSS {gib(run.peak_rss)} GiB, median step "
                f"{statistics.median(run.step_times[args.warmup :]):.3f}s, losses "
                + ", ".join(f"{x:.4f}" for x in run.losses[:3]),
                flush=True,
            )
            runs.append(run)

    sources = list(args.copy_sources) if args.copy_sources else None
    adept_runs = [r for r in runs if r.name == "adept_cpt_adept"]
    if adept_runs:
        meta = json.loads((adept_runs[0].output_dir / "final" / "adept_expansion.json").read_text())
        sources = meta["source_layers"]
    report = print_report(shape, args, runs, baseline, sources)
    print(f"\nTotal {time.perf_counter() - start:.0f}s")
    if args.json:
        report.update(
            command=provenance["command"],
            provenance=provenance,
            shape=dataclasses.asdict(shape),
            baseline_rss=baseline,
            runs=[{**dataclasses.asdict(r), "output_dir": str(r.output_dir)} for r in runs],
        )
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
