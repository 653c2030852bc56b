"""GPU check: bf16 against fp32 losses, tokens/s and MFU, and peak memory against the plan.

No GPU has been available where this project is developed, so what only a GPU can show is
gathered into one script of under 10 minutes on one GPU: that bf16 training (with fp32
trained weights, the shipped configs' ``trainable_dtype``) computes what fp32 computes, how
fast ADEPT and full CPT train, and whether ``adept-cpt plan`` predicts the CUDA peak. It runs
the recipe as a user does, ``tune run adept_cpt --config tiny_demo key=value ...`` (or, where
torchtune's launcher cannot be imported, what it runs: ``python -m adept_cpt``), each run in
its own process (so one run's CUDA peak cannot leak into another's), and reads what the run
logged: its DiskLogger metric log (loss, ``grad_norm``, ``tokens_per_second_per_gpu``,
``peak_memory_alloc`` every step) and its log messages (what trained).

The model is Qwen3-0.6B-shaped (28 layers, width 1024, 16 query / 8 KV heads of 128, MLP
3072, vocabulary 151,936, tied head, RoPE base 1e6: the numbers of
``adept_components.models.qwen3_0_6b``) with random weights: transformers'
``Qwen3ForCausalLM(config)`` initialisation (N(0, 0.02), norms 1), saved with
``save_pretrained`` in bf16, written once into ``benchmarks/.cache/gpu_check/``. Without
transformers (a GPU machine set up with ``gpu_setup.sh`` may lack it) the project's own
builder writes the same shape with the same initialisation. The tokenizer is the demo
model's (2,048 ids): only those embedding rows ever see a token, while FLOPs and memory are
the whole vocabulary's. The data is the demo's: ``domain.txt`` for training,
``general.txt`` for ADEPT's probe; ``tiny_demo`` wires both.

Runs (GPU defaults; every run: seed 0, AdamW lr 1e-3, no canary, no saves before the final
one, no unit re-scoring, ``clip_grad_norm=inf`` so ``grad_norm`` is logged, peak memory
logged every step):

==============  =================================================================  ========
run             what                                                               steps
==============  =================================================================  ========
``adept_bf16``  ADEPT, copies of layers 22, 23, 25, 27 (the paper's choice for     25
                Qwen3-1.7B, also 28 layers), bf16 with fp32 trained weights,
                8 x 2048 tokens per step
``full_bf16``   full CPT, the same                                                 25
``adept_fp32``  ADEPT in fp32, the same data and seed                              5
``full_fp32``   full CPT in fp32                                                   5
==============  =================================================================  ========

Batch 8 x 2048 is what ``adept-cpt plan`` fits on one 80 GiB GPU with margin: full CPT in
bf16 peaks at 51.9 GiB, ADEPT at 15.0 GiB. Each run is planned first, and activation
checkpointing is turned on where the predicted peak exceeds ``--fit`` (0.8) of the GPU's
memory: on an 80 GiB GPU that is ``full_fp32`` (67.6 GiB without it).

What it reports and checks (exit status 1 when a check fails):

- **bf16 against fp32.** The first ``--compare-steps`` losses of each bf16 run against its
  fp32 run's. The learning-rate warmup is exactly those steps, and warmup does not depend on
  ``max_steps``, so the 25-step bf16 run's first 5 steps are those of a 5-step run. Passes
  when every step's ``|loss_bf16 - loss_fp32| <= LOSS_RTOL * loss_fp32`` (1%), and the
  step-1 gradient norms within ``GRAD_NORM_RTOL`` (5%); ``LOSS_RTOL`` says why.
- **Throughput.** Median ``tokens_per_second_per_gpu`` over the steps after
  ``--warmup-steps``; MFU = the planner's model FLOPs per step / the measured step time /
  the GPU's peak (``--peak-tflops``; default from the GPU's name, dense bf16: H100 SXM 989,
  H100 NVL 835, H100 PCIe 756, H200 989, A100 312), which is tokens/s x FLOPs per token /
  peak; HFU adds what the step recomputes (activation checkpointing, the deferred head).
- **Peak memory.** The largest ``peak_memory_alloc`` logged from step 2 on (step 1 also
  holds the checkpoint load and AdamW's first allocation; the recipe resets the peak every
  step) against ``Planner.estimate(...).memory.peak`` of the same config and overrides;
  passes within +-15%. On a CPU the recipe logs only the process's RSS, which is no tensor
  peak: the prediction is recorded and the check skipped.
- **The plan sized the run.** The planner's trained and total parameter counts equal those
  the run logs (``trainable: N / M``).
- **Every run finished** (a failed run is one line in the report and the JSON).

Budget on one H100 (estimated; not yet run on one): writing the model 20-40 s the first time
(cached after); planning 5-10 s per run; each ``tune run`` 30-60 s (start-up and imports,
checkpoint load, tokenizing the demo text, the steps: about 0.1-0.3 s each in bf16 and 1-2 s
in fp32, and the final 1.3 GB HF save): about 5 minutes in all. ``--run-timeout`` (300 s)
bounds each run.

Run on the GPU machine (after ``bash benchmarks/gpu_setup.sh install``)::

    python benchmarks/gpu_check.py                  # -> benchmarks/results/gpu_check.json

The same code path on a CPU with a tiny Qwen3 (4 layers, width 64; 2 x 64 tokens, 3 steps; its
results go to the gitignored ``benchmarks/.cache/quick_results/``)::

    python benchmarks/gpu_check.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch

CONFIG = "tiny_demo"  # the shipped config whose data, probe and tokenizer wiring the runs use
SEED = 0
GIB = 2**30

# Qwen3-0.6B's config.json numbers (HF Qwen/Qwen3-0.6B), as adept_components.models.qwen3_0_6b.
QWEN3_0_6B: dict[str, Any] = {
    "model_type": "qwen3",
    "vocab_size": 151_936,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40_960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "tie_word_embeddings": True,
}
# The CPU path: the same family and tying, small enough for seconds per run. The vocabulary
# is the demo tokenizer's 2,048 ids (the recipe refuses more ids than embedding rows).
TINY: dict[str, Any] = {
    **QWEN3_0_6B,
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
}
INIT_STD = 0.02  # transformers' Qwen3 initializer_range
MARKER = "gpu_check_model.json"  # in each model directory: what wrote it, and the init


@dataclasses.dataclass(frozen=True)
class Preset:
    """A model and the run sizes that go with it.

    Attributes:
        name (str): names the cached model directory.
        hf_config (dict): the model's ``config.json`` numbers.
        adept_layers (tuple[int, ...]): base layers ADEPT copies (``expansion.layers``).
        batch_size (int), seq_len (int): sequences and tokens per sequence of a step.
        warmup_steps (int): untimed steps before the timed ones.
        timed_steps (int): steps whose median rate is reported.
        compare_steps (int): steps compared between bf16 and fp32 (and the LR warmup).
        lr (float): AdamW's learning rate.
    """

    name: str
    hf_config: dict[str, Any]
    adept_layers: tuple[int, ...]
    batch_size: int
    seq_len: int
    warmup_steps: int
    timed_steps: int
    compare_steps: int
    lr: float


PRESETS = {
    "qwen3_0_6b": Preset(
        "qwen3_0_6b_random", QWEN3_0_6B, (22, 23, 25, 27), 8, 2048, 5, 20, 5, 1e-3
    ),
    "tiny": Preset("qwen3_tiny_random", TINY, (2, 3), 2, 64, 1, 2, 3, 1e-3),
}

# bf16 keeps 8 significant bits: each rounding is off by up to 2**-9 (0.2%) of the value.
# The loss is a mean over b*s tokens of a log-softmax computed in fp32, so the rounding of
# single logits averages out; what stays is the drift of the residual stream through the
# layers (a relative error growing like the square root of the depth: about 1% after 28
# layers, at most) and the bf16 gradients behind the compared steps' updates. So 1% of the
# loss passes any correct bf16 path; the tiny CPU path differs by about 2e-5 (``--device cpu
# --tiny``). On random weights the loss sits near ln(vocabulary) and moves little in a few
# steps, so the loss catches a broken path (wrong or unloaded weights, non-finite values),
# not a subtle one; the step-1 gradient norm, which every trained tensor's gradient enters,
# is the sharper check: independent per-element roundings move a norm over millions of
# elements far less than 1%, a missing or wrongly scaled gradient moves it by tens of %
# (the tiny path: 3e-4 to 6e-4).
LOSS_RTOL = 0.01
GRAD_NORM_RTOL = 0.05
PEAK_TOLERANCE = 0.15  # the planner's stated accuracy (benchmarks/plan_vs_measured.py)
FIT = 0.8  # share of the GPU's memory a run's predicted peak may take without checkpointing

# Dense bf16 tensor-core peaks, TFLOP/s (NVIDIA data sheets, without sparsity), matched
# case-insensitively on the GPU's name, first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float, str], ...] = (
    ("H100 PCIe", 756.0, "H100 PCIe"),
    ("H100 NVL", 835.0, "H100 NVL"),
    ("H200 NVL", 835.0, "H200 NVL"),
    ("H100", 989.0, "H100 SXM"),
    ("H200", 989.0, "H200 SXM"),
    ("A100", 312.0, "A100"),
)


def program_error(message: str) -> SystemExit:
    """The one line a refused invocation ends with."""
    return SystemExit(f"gpu_check: error: {message}")


# ------------------------------------------------------------------------------ the model


def model_directory(preset: Preset, cache_dir: Path) -> tuple[Path, str]:
    """The preset's random-weight HF model directory, written once and reused.

    The directory name carries a hash of the config, seed and init, so another shape never
    reuses it; a directory without its ``MARKER`` (an interrupted write) is written again.

    Args:
        preset (Preset): the model's numbers.
        cache_dir (Path): where model directories are kept.

    Returns:
        tuple[Path, str]: the directory, and what wrote its weights.
    """
    from adept_components.config import asset_path

    tokenizer_dir = Path(asset_path("demo/base_model"))
    demo = json.loads((tokenizer_dir / "config.json").read_text())
    hf_config = {
        **preset.hf_config,
        "bos_token_id": demo.get("bos_token_id"),
        "eos_token_id": demo["eos_token_id"],  # the demo tokenizer's <|endoftext|>
    }
    key = hashlib.sha256(json.dumps([hf_config, SEED, INIT_STD], sort_keys=True).encode())
    directory = cache_dir / f"{preset.name}-{key.hexdigest()[:10]}"
    if (directory / MARKER).is_file():
        return directory, json.loads((directory / MARKER).read_text())["written_by"]
    files = [tokenizer_dir / name for name in ("vocab.json", "merges.txt", "tokenizer.json")]
    start = time.perf_counter()
    writer = write_random_qwen3(directory, hf_config, files)
    print(f"Wrote {directory} ({writer}) in {time.perf_counter() - start:.0f}s", flush=True)
    return directory, writer


def write_random_qwen3(directory: Path, hf_config: dict[str, Any], files: list[Path]) -> str:
    """Write a random-weight Qwen3 as a standard HF directory in bf16, with a tokenizer.

    transformers' own ``Qwen3ForCausalLM`` writes it when transformers is installed (the
    directory is then what any HF tool writes, not what this project thinks one is);
    otherwise the project's builder does, with transformers' initialisation: every matrix
    and the embedding N(0, 0.02), norm gains 1. Either way ``MARKER`` records which.

    Args:
        directory (Path): the directory to write (replaced atomically).
        hf_config (dict): ``config.json`` fields (``model_type`` qwen3).
        files (list[Path]): tokenizer files copied in.

    Returns:
        str: what wrote the weights, e.g. ``transformers 5.25.0``.
    """
    from adept_components.atomic import atomic_directory

    torch.manual_seed(SEED)
    try:
        import transformers
    except ImportError:
        return _write_with_builder(directory, hf_config, files)
    writer = f"transformers {transformers.__version__}"
    fields = {k: v for k, v in hf_config.items() if k != "model_type"}
    config = transformers.Qwen3Config(**fields, initializer_range=INIT_STD)
    model = transformers.Qwen3ForCausalLM(config).to(torch.bfloat16)
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp)
        for path in files:
            shutil.copy2(path, tmp / path.name)
        (tmp / MARKER).write_text(json.dumps(_marker(writer), indent=1))
    return writer


def _write_with_builder(directory: Path, hf_config: dict[str, Any], files: list[Path]) -> str:
    """``write_random_qwen3`` without transformers: the project's Qwen3 builder."""
    from adept_components.models.architecture import ModelArchitecture

    writer = "adept_components' Qwen3 builder (transformers is not installed)"
    architecture = ModelArchitecture.from_hf_config(hf_config)
    model = architecture.build(max_seq_len=16)  # the RoPE cache is a buffer, never saved
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("scale"):  # RMSNorm gains
                param.fill_(1.0)
            else:
                param.normal_(0.0, INIT_STD)
    config = {"torch_dtype": "bfloat16", "architectures": ["Qwen3ForCausalLM"]}
    config.update({k: hf_config[k] for k in ("bos_token_id", "eos_token_id")})
    common.write_hf_model(
        directory, model.to(torch.bfloat16), architecture, config, files, {MARKER: _marker(writer)}
    )
    return writer


def _marker(writer: str) -> dict[str, Any]:
    """What ``MARKER`` holds: the writer and the initialisation."""
    return {"written_by": writer, "seed": SEED, "init_std": INIT_STD}


# ------------------------------------------------------------------------------ one run


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One ``tune run``: a method in a precision for some steps.

    Attributes:
        method (str): ``adept`` or ``full``.
        dtype (str): ``bf16`` (with ``trainable_dtype: fp32``) or ``fp32``.
        steps (int): ``max_steps``.
    """

    method: str
    dtype: str
    steps: int

    @property
    def name(self) -> str:
        return f"{self.method}_{self.dtype}"

    def overrides(
        self, preset: Preset, device: str, model_dir: Path, output_dir: Path, checkpointing: bool
    ) -> list[str]:
        """The ``key=value`` items after ``--config tiny_demo``.

        Args:
            preset (Preset): model and sizes.
            device (str): ``cuda`` or ``cpu``.
            model_dir (Path): the random-weight model directory.
            output_dir (Path): the run's own, fresh output directory.
            checkpointing (bool): ``enable_activation_checkpointing``.

        Returns:
            list[str]: the overrides.
        """
        seq = preset.seq_len
        items = [
            f"checkpointer.checkpoint_dir={model_dir}",
            f"output_dir={output_dir}",
            f"device={device}",
            f"dtype={self.dtype}",
            f"trainable_dtype={'fp32' if self.dtype == 'bf16' else 'null'}",
            f"method={self.method}",
            f"seed={SEED}",
            f"batch_size={preset.batch_size}",
            "gradient_accumulation_steps=1",
            f"model.max_seq_len={seq}",
            f"tokenizer.max_seq_len={seq}",
            f"dataset.max_seq_len={seq}",
            f"probe.max_seq_len={min(seq, 128)}",  # the demo's 128, within the RoPE cache
            f"max_steps={self.steps}",
            f"optimizer.lr={preset.lr}",
            # The compared steps are the warmup, which is the same whatever max_steps is.
            f"lr_scheduler.num_warmup_steps={preset.compare_steps}",
            f"unit_tuning.refresh_every={self.steps + 1}",  # no re-scoring inside the timing
            f"enable_activation_checkpointing={str(checkpointing).lower()}",
            "compile=false",
            "canary.every_n_steps=0",
            "save_every_n_steps=0",
            "log_every_n_steps=1",
            "log_peak_memory_stats=true",
            "clip_grad_norm=inf",  # measure and log grad_norm, clip nothing
        ]
        if self.method == "adept":
            items.append(f"expansion.layers=[{','.join(map(str, preset.adept_layers))}]")
        return items


def predict(overrides: list[str]) -> dict[str, Any]:
    """``adept-cpt plan``'s numbers for one GPU and the run's own method.

    Args:
        overrides (list[str]): the run's ``key=value`` items.

    Returns:
        dict: predicted peak and its parts (GiB), model and recomputed FLOPs per step, FLOPs
        per token, trained and total parameters, trained layer positions.
    """
    from adept_components.cli import load_planner

    planner, _ = load_planner(CONFIG, overrides)
    estimate = planner.estimate(planner.method, planner.batching, 1)
    memory, sized = estimate.memory, estimate.sized
    return {
        "peak_gib": memory.peak / GIB,
        "weights_gib": memory.weights / GIB,
        "grads_gib": memory.grads / GIB,
        "optimizer_gib": memory.optimizer / GIB,
        "activations_gib": memory.activations / GIB,
        "optimizer_temp_gib": memory.optimizer_temp / GIB,
        "flops_per_step": estimate.flops_per_step,
        "recompute_flops_per_step": estimate.recompute_per_step,
        "flops_per_token": estimate.flops_per_step / planner.batching.tokens(1),
        "trainable_params": sized.trainable_params,
        "total_params": sized.total_params,
        "trained_positions": list(sized.positions) if sized.positions is not None else None,
    }


def plan_run(
    spec: RunSpec, preset: Preset, args: argparse.Namespace, model_dir: Path, output_dir: Path
) -> tuple[list[str], dict[str, Any]]:
    """The run's overrides and prediction, with activation checkpointing only if needed.

    Args:
        spec (RunSpec): the run.
        preset (Preset): model and sizes.
        args (argparse.Namespace): ``device``, ``gpu_memory`` (GiB or None) and ``fit``.
        model_dir (Path): the model directory.
        output_dir (Path): the run's output directory.

    Returns:
        tuple[list[str], dict]: the overrides and the planner's numbers for them.
    """
    overrides = spec.overrides(preset, args.device, model_dir, output_dir, checkpointing=False)
    predicted = predict(overrides)
    if args.gpu_memory and predicted["peak_gib"] > args.fit * args.gpu_memory:
        overrides = spec.overrides(preset, args.device, model_dir, output_dir, checkpointing=True)
        predicted = predict(overrides)
    return overrides, predicted


def launcher() -> list[str]:
    """The command that starts a run: torchtune's ``tune run adept_cpt``, or what it runs.

    In one process ``tune run adept_cpt ARGS`` is ``runpy.run_module("adept_cpt")`` with
    ``ARGS`` as ``sys.argv``. The launcher itself imports more than the recipe needs (its
    ``download`` command's kagglehub, which a GPU machine set up with ``gpu_setup.sh``
    lacks); there the recipe module runs directly, ``python -m adept_cpt ARGS``: the same
    entry, ``adept_cpt.main``, with the same arguments.

    Returns:
        list[str]: the command, up to the recipe's arguments.
    """
    import adept_components.quiet  # noqa: F401  (before torchtune: torchao's notice)

    try:
        import torchtune._cli.tune  # noqa: F401
    except ImportError:
        return [sys.executable, "-m", "adept_cpt"]
    return [sys.executable, "-m", "torchtune._cli.tune", "run", "adept_cpt"]


def tune_run(
    command: list[str], overrides: list[str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess:
    """``tune run adept_cpt --config tiny_demo OVERRIDES`` in its own process, offline.

    Args:
        command (list[str]): what ``launcher`` returned.
        overrides (list[str]): the run's ``key=value`` items.
        cwd (Path): the directory it runs in.
        timeout (float): seconds.

    Returns:
        subprocess.CompletedProcess: its exit status and output.

    Raises:
        subprocess.TimeoutExpired: the run took longer than ``timeout`` seconds.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*command, "--config", CONFIG, *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(done: subprocess.CompletedProcess) -> str:
    """The last line a failed run wrote to stderr (its error), torchao's notice left out."""
    lines = [
        line.strip()
        for line in done.stderr.splitlines()
        if line.strip() and "cpp extensions" not in line
    ]
    return lines[-1] if lines else f"exit status {done.returncode}, nothing on stderr"


def training_lines(rows: list[tuple[int, dict[str, float]]]) -> list[dict[str, float]]:
    """The metric log's training lines, ``{"step": N, "loss": ..., ...}`` in step order."""
    return [{"step": step, **fields} for step, fields in rows if "loss" in fields]


def by_step(run: dict[str, Any]) -> dict[int, dict[str, float]]:
    """A finished run's logged fields by step."""
    return {int(line["step"]): line for line in run["steps"]}


def run_once(
    spec: RunSpec, preset: Preset, args: argparse.Namespace, model_dir: Path, work: Path
) -> dict[str, Any]:
    """Plan one run, run it in its own process and read back what it logged.

    Args:
        spec (RunSpec): the run.
        preset (Preset): model and sizes.
        args (argparse.Namespace): the command line.
        model_dir (Path): the model directory.
        work (Path): a scratch directory; the run's output directory is made in it and
            deleted afterwards (its final HF checkpoint is not needed).

    Returns:
        dict: ``spec``, ``overrides``, ``activation_checkpointing``, ``planner``,
        ``wall_s``, and either ``error`` (one line) and ``stderr_tail``, or ``steps`` (the
        logged training lines), ``trainable_params``, ``total_params`` and
        ``trained_layers``.
    """
    output_dir = work / spec.name
    overrides, predicted = plan_run(spec, preset, args, model_dir, output_dir)
    record: dict[str, Any] = {
        "spec": dataclasses.asdict(spec),
        "overrides": overrides,
        "activation_checkpointing": "enable_activation_checkpointing=true" in overrides,
        "planner": predicted,
    }
    print(
        f"  {spec.name}: {spec.steps} steps, plan peak {_size(predicted['peak_gib'])}, "
        f"activation checkpointing {'on' if record['activation_checkpointing'] else 'off'} ...",
        flush=True,
    )
    start = time.perf_counter()
    try:
        done = tune_run(args.launcher, overrides, work, args.run_timeout)
    except subprocess.TimeoutExpired:
        done = None
    record["wall_s"] = time.perf_counter() - start
    if done is None:
        record["error"] = f"timed out after {args.run_timeout:g} s (--run-timeout)"
    elif done.returncode != 0:
        record.update(error=error_line(done), stderr_tail=done.stderr[-4000:])
    else:
        messages = (done.stdout + done.stderr).splitlines()
        record["steps"] = training_lines(common.read_metric_log(output_dir / "logs"))
        trainable, total = common.trainable_counts(messages)
        record.update(
            trainable_params=trainable,
            total_params=total,
            trained_layers=common.trained_layers(messages),
        )
    shutil.rmtree(output_dir, ignore_errors=True)
    if "error" in record:
        outcome = f"FAILED: {record['error']}"
    else:
        losses = [line["loss"] for line in record["steps"]]
        outcome = f"done: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    print(f"    {outcome} ({record['wall_s']:.0f} s)", flush=True)
    return record


# ------------------------------------------------------------------------------ analysis


def throughput(run: dict[str, Any], preset: Preset, peak_tflops: float | None) -> dict[str, Any]:
    """Median tokens/s per GPU after the warmup steps, the step time, MFU and HFU.

    The recipe counts the tokens that have a target, ``b·(s−1)`` per sequence; the step
    time is that count over the logged rate, and MFU the planner's model FLOPs per step over
    the step time and the peak.

    Args:
        run (dict): what ``run_once`` returned for a finished run.
        preset (Preset): batch, sequence and warmup.
        peak_tflops (float | None): the device's peak; None leaves MFU and HFU out.

    Returns:
        dict: ``tokens_per_s``, ``step_s``, ``timed_steps``, ``flops_per_token``,
        ``achieved_tflops``, ``mfu``, ``hfu``.
    """
    rates = [
        fields["tokens_per_second_per_gpu"]
        for step, fields in sorted(by_step(run).items())
        if step > preset.warmup_steps
    ]
    rate = statistics.median(rates)
    step_s = preset.batch_size * (preset.seq_len - 1) / rate
    planner = run["planner"]
    achieved = planner["flops_per_step"] / step_s / 1e12
    hardware = (planner["flops_per_step"] + planner["recompute_flops_per_step"]) / step_s / 1e12
    return {
        "tokens_per_s": rate,
        "step_s": step_s,
        "timed_steps": len(rates),
        "flops_per_token": planner["flops_per_token"],
        "achieved_tflops": achieved,
        "mfu": achieved / peak_tflops if peak_tflops else None,
        "hfu": hardware / peak_tflops if peak_tflops else None,
    }


def peak_memory(run: dict[str, Any], device: str) -> dict[str, Any]:
    """The run's measured peak beside the planner's, from step 2 on.

    Args:
        run (dict): what ``run_once`` returned for a finished run.
        device (str): ``cuda`` or ``cpu``.

    Returns:
        dict: ``predicted_gib``, ``measured_gib`` (largest ``peak_memory_alloc`` of steps 2+;
        None on a CPU), ``reserved_gib``, ``step1_gib``, ``rss_gib`` (CPU), ``ratio`` and
        ``passed`` (None when not comparable).
    """
    steps = by_step(run)
    predicted = run["planner"]["peak_gib"]
    if device != "cuda":
        rss = max(fields.get("peak_memory_rss", 0.0) for fields in steps.values())
        return {"predicted_gib": predicted, "measured_gib": None, "rss_gib": rss,
                "ratio": None, "passed": None}  # fmt: skip
    later = [fields for step, fields in steps.items() if step >= 2] or list(steps.values())
    measured = max(fields["peak_memory_alloc"] for fields in later)
    ratio = measured / predicted
    return {
        "predicted_gib": predicted,
        "measured_gib": measured,
        "reserved_gib": max(fields["peak_memory_reserved"] for fields in later),
        "step1_gib": steps[min(steps)]["peak_memory_alloc"],
        "ratio": ratio,
        "passed": abs(ratio - 1) <= PEAK_TOLERANCE,
    }


def compare_precision(bf16: dict[str, Any], fp32: dict[str, Any], steps: int) -> dict[str, Any]:
    """Per-step losses of a bf16 run against its fp32 run, and the step-1 gradient norms.

    Args:
        bf16 (dict), fp32 (dict): finished runs of one method.
        steps (int): how many leading steps to compare.

    Returns:
        dict: both loss lists, ``max_abs_diff``, ``max_rel_diff``, ``loss_moved`` (fp32, first
        to last compared step), ``rtol``, ``grad_norms`` (step 1, bf16 and fp32),
        ``grad_norm_rel_diff``, ``grad_norm_rtol``, ``loss_passed`` and ``grad_norm_passed``.
    """
    low_steps, high_steps = by_step(bf16), by_step(fp32)
    low = [low_steps[s]["loss"] for s in range(1, steps + 1)]
    high = [high_steps[s]["loss"] for s in range(1, steps + 1)]
    diffs = [abs(a - b) for a, b in zip(low, high, strict=True)]
    relative = [d / abs(b) for d, b in zip(diffs, high, strict=True)]
    norms = [low_steps[1]["grad_norm"], high_steps[1]["grad_norm"]]
    norm_diff = abs(norms[0] - norms[1]) / norms[1]
    finite = all(math.isfinite(x) for x in low + high + norms)
    return {
        "bf16_losses": low,
        "fp32_losses": high,
        "max_abs_diff": max(diffs),
        "max_rel_diff": max(relative),
        "loss_moved": high[-1] - high[0],
        "rtol": LOSS_RTOL,
        "grad_norms": norms,
        "grad_norm_rel_diff": norm_diff,
        "grad_norm_rtol": GRAD_NORM_RTOL,
        "loss_passed": finite and max(relative) <= LOSS_RTOL,
        "grad_norm_passed": finite and norm_diff <= GRAD_NORM_RTOL,
    }


def gpu_peak(args: argparse.Namespace, gpu: str | None) -> tuple[float | None, str]:
    """The peak TFLOP/s MFU is measured against, and where the number comes from."""
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if gpu is None:
        return None, "no GPU; --peak-tflops sets a nominal peak"
    for needle, tflops, label in PEAK_BF16_TFLOPS:
        if needle.lower() in gpu.lower():
            return tflops, f"{label} dense bf16, from the GPU's name ({gpu})"
    return None, f"no peak known for {gpu!r}; --peak-tflops sets it"


def analyse(
    runs: dict[str, dict[str, Any]], preset: Preset, device: str, peak: float | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Throughput, precision and memory of the runs, and the list of checks.

    Args:
        runs (dict): ``run_once`` records by run name.
        preset (Preset): model and sizes.
        device (str): ``cuda`` or ``cpu``.
        peak (float | None): peak TFLOP/s.

    Returns:
        tuple: ``{"throughput", "precision", "memory"}`` and the checks, each ``name``,
        ``passed`` (None: not applicable here) and ``detail``.
    """
    ok = {name: run for name, run in runs.items() if "error" not in run}
    checks = [
        {"name": f"{name} finished", "passed": "error" not in run,
         "detail": run["error"] if "error" in run else f"{run['wall_s']:.0f} s"}
        for name, run in runs.items()
    ]  # fmt: skip
    memory, speed, precision = {}, {}, {}
    for name, run in ok.items():
        planner = run["planner"]
        same = (planner["trainable_params"], planner["total_params"]) == (
            run["trainable_params"],
            run["total_params"],
        )
        checks.append(
            {"name": f"{name}: the plan sized what trained", "passed": same,
             "detail": f"planner {planner['trainable_params']:,} / {planner['total_params']:,}, "
                       f"run {run['trainable_params']:,} / {run['total_params']:,}"}
        )  # fmt: skip
        memory[name] = peak_memory(run, device)
        m = memory[name]
        detail = (
            f"measured {m['measured_gib']:.2f} GiB vs planned {m['predicted_gib']:.2f} GiB "
            f"(x{m['ratio']:.3f}, tolerance {PEAK_TOLERANCE:.0%})"
            if m["passed"] is not None
            else f"skipped on {device}: RSS {m['rss_gib']:.2f} GiB is no tensor peak "
            f"(planned {_size(m['predicted_gib'])})"
        )
        checks.append({"name": f"{name}: peak memory", "passed": m["passed"], "detail": detail})
    for method in ("adept", "full"):
        timed = ok.get(f"{method}_bf16")
        if timed is not None:
            speed[method] = throughput(timed, preset, peak)
        if timed is not None and f"{method}_fp32" in ok:
            result = compare_precision(timed, ok[f"{method}_fp32"], preset.compare_steps)
            precision[method] = result
            checks += [
                {"name": f"{method}: bf16 losses match fp32", "passed": result["loss_passed"],
                 "detail": f"max |dloss| {result['max_abs_diff']:.2e}, relative "
                           f"{result['max_rel_diff']:.2e} (tolerance {LOSS_RTOL:g}) over "
                           f"{preset.compare_steps} steps; fp32 loss moved "
                           f"{result['loss_moved']:+.4f}"},
                {"name": f"{method}: bf16 step-1 gradient norm matches fp32",
                 "passed": result["grad_norm_passed"],
                 "detail": f"{result['grad_norms'][0]:.4g} vs {result['grad_norms'][1]:.4g}, "
                           f"relative {result['grad_norm_rel_diff']:.2e} "
                           f"(tolerance {GRAD_NORM_RTOL:g})"},
            ]  # fmt: skip
    if {"adept", "full"} <= speed.keys():
        speed["adept_vs_full"] = {
            "tokens_per_s": speed["adept"]["tokens_per_s"] / speed["full"]["tokens_per_s"],
            "flops_per_token": speed["adept"]["flops_per_token"] / speed["full"]["flops_per_token"],
        }
    return {"throughput": speed, "precision": precision, "memory": memory}, checks


# ------------------------------------------------------------------------------ the report


def _size(gib: float) -> str:
    """GiB, or MiB under 1 GiB (the tiny model's peaks)."""
    return f"{gib:.2f} GiB" if gib >= 1 else f"{gib * 1024:.1f} MiB"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def render(result: dict[str, Any]) -> str:
    """The short markdown report: one row per run, the precision rows and the checks.

    Args:
        result (dict): the results JSON.

    Returns:
        str: markdown.
    """
    s = result["settings"]
    lines = [
        f"{result['model']['name']} ({result['model']['params']:,} parameters, "
        f"{result['model']['written_by']}) on {result['device_name']}; batch {s['batch_size']} x "
        f"{s['seq_len']} tokens; "
        + (
            f"MFU against {result['peak_tflops']:g} TFLOP/s ({result['peak_tflops_source']})"
            if result["peak_tflops"]
            else f"no MFU ({result['peak_tflops_source']})"
        ),
        "",
        "| run | act. ckpt | trained / total | tokens/s | step [s] | MFU | HFU | peak (plan) "
        "| measured / plan |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in result["runs"].items():
        if "error" in run:
            lines.append(f"| {name} | failed: {run['error']} | | | | | | | |")
            continue
        speed = result["throughput"].get(name.removesuffix("_bf16")) if "bf16" in name else None
        m = result["memory"][name]
        measured = m["measured_gib"] if m["measured_gib"] is not None else m.get("rss_gib")
        label = "" if m["measured_gib"] is not None else " RSS"
        lines.append(
            f"| {name} | {'on' if run['activation_checkpointing'] else 'off'} | "
            f"{run['trainable_params'] / 1e6:.1f}M / {run['total_params'] / 1e6:.1f}M | "
            + (
                f"{speed['tokens_per_s']:,.0f} | {speed['step_s']:.3f} | {_pct(speed['mfu'])} | "
                f"{_pct(speed['hfu'])} | "
                if speed
                else "| | | | "
            )
            + f"{_size(measured)}{label} ({_size(m['predicted_gib'])}) | "
            + (f"{m['ratio']:.3f} |" if m["ratio"] is not None else "n/a |")
        )
    if result["precision"]:
        lines += [
            "",
            "| bf16 vs fp32 | steps | max abs dloss | max rel dloss | fp32 loss moved | "
            "step-1 grad norm rel diff |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for method, p in result["precision"].items():
            lines.append(
                f"| {method} | {len(p['bf16_losses'])} | {p['max_abs_diff']:.2e} | "
                f"{p['max_rel_diff']:.2e} | {p['loss_moved']:+.4f} | "
                f"{p['grad_norm_rel_diff']:.2e} |"
            )
    lines.append("")
    for check in result["checks"]:
        mark = {True: "pass", False: "FAIL", None: "skip"}[check["passed"]]
        lines.append(f"- {mark}: {check['name']}: {check['detail']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; the preset fills what is not given.

    Raises:
        SystemExit: a bad combination, in one line.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen3 (the CPU path)")
    parser.add_argument("--batch-size", type=int, help="sequences per step (8; tiny 2)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (2048; tiny 64)")
    parser.add_argument("--warmup-steps", type=int, help="untimed steps first (5; tiny 1)")
    parser.add_argument("--timed-steps", type=int, help="steps timed after them (20; tiny 2)")
    parser.add_argument("--compare-steps", type=int, help="bf16 vs fp32 steps (5; tiny 3)")
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's peak (default: from the GPU's name)"
    )
    parser.add_argument(
        "--gpu-memory", type=float, metavar="GiB", help="default: the GPU's (CPU: no limit)"
    )
    parser.add_argument(
        "--fit", type=float, default=FIT, help="share of --gpu-memory a run may plan to use"
    )
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument(
        "--cache-dir", type=Path, default=common.CACHE_DIR / "gpu_check", help="model cache"
    )
    parser.add_argument("--out", type=Path, help="results JSON (default in benchmarks/results)")
    args = parser.parse_args(argv)
    preset = PRESETS["tiny" if args.tiny else "qwen3_0_6b"]
    sizes = {
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "warmup_steps": args.warmup_steps,
        "timed_steps": args.timed_steps,
        "compare_steps": args.compare_steps,
    }
    args.preset = dataclasses.replace(preset, **{k: v for k, v in sizes.items() if v is not None})
    p = args.preset
    if min(p.batch_size, p.seq_len - 1, p.timed_steps, p.compare_steps) < 1 or p.warmup_steps < 0:
        parser.error("sizes and step counts must be positive (--warmup-steps may be 0)")
    if p.compare_steps > p.warmup_steps + p.timed_steps:
        parser.error(
            f"--compare-steps {p.compare_steps} exceeds the bf16 runs' "
            f"{p.warmup_steps + p.timed_steps} steps (--warmup-steps + --timed-steps)"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise program_error(
            "--device cuda, but torch sees no GPU; the CPU path is --device cpu --tiny"
        )
    if args.out is None:
        args.out = common.results_dir(quick=args.tiny) / "gpu_check.json"
    return args


def main(argv: list[str] | None = None) -> int:
    """Plan and run the four runs, analyse them, write the JSON and print the report.

    Args:
        argv (list[str] | None): arguments; default ``sys.argv[1:]``.

    Returns:
        int: 0 when every check passed (or was skipped), 1 otherwise.
    """
    from adept_components.config import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    preset = args.preset
    record = common.provenance([__file__, *argv])
    print(f"$ {record['command']}\n{common.provenance_line(record)}", flush=True)
    gpu = record["gpu"] if args.device == "cuda" else None
    if args.device == "cuda" and args.gpu_memory is None:
        args.gpu_memory = torch.cuda.get_device_properties(0).total_memory / GIB
    peak, peak_source = gpu_peak(args, gpu)
    args.launcher = launcher()
    print(f"MFU against {peak:g} TFLOP/s: {peak_source}" if peak else f"No MFU: {peak_source}",
          flush=True)  # fmt: skip

    start = time.perf_counter()
    model_dir, writer = model_directory(preset, args.cache_dir)
    config = json.loads((model_dir / "config.json").read_text())
    steps = preset.warmup_steps + preset.timed_steps
    specs = [
        RunSpec("adept", "bf16", steps),
        RunSpec("full", "bf16", steps),
        RunSpec("adept", "fp32", preset.compare_steps),
        RunSpec("full", "fp32", preset.compare_steps),
    ]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        try:
            runs = {s.name: run_once(s, preset, args, model_dir, Path(work)) for s in specs}
        except (ConfigError, FileNotFoundError) as e:  # the planner refused the config
            raise program_error(f"adept-cpt plan refused a run: {e}") from None
    analysis, checks = analyse(runs, preset, args.device, peak)
    full_plan = runs["full_bf16"]["planner"]
    result = {
        "provenance": record,
        "device": args.device,
        "device_name": gpu or f"CPU ({common.cpu_model()})",
        "gpu_memory_gib": args.gpu_memory,
        "model": {
            "name": preset.name,
            "config": config,
            "params": full_plan["total_params"],
            "written_by": writer,
            "directory": str(model_dir),
        },
        "settings": {
            **{k: v for k, v in dataclasses.asdict(preset).items() if k != "hf_config"},
            "config": CONFIG,
            "seed": SEED,
            "fit": args.fit,
        },
        "launcher": " ".join(["python", *args.launcher[1:]]),
        "peak_tflops": peak,
        "peak_tflops_source": peak_source,
        "runs": runs,
        **analysis,
        "checks": checks,
        "passed": all(c["passed"] is not False for c in checks),
        "wall_s": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(render(result))
    print(f"\n{'All checks passed' if result['passed'] else 'FAILED'}; {result['wall_s']:.0f} s; "
          f"results: {args.out}")  # fmt: skip
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
