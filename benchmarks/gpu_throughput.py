"""Benchmark: ADEPT vs full training throughput, memory and MFU on one GPU (Qwen3-1.7B and -8B).

Random bf16 weights of the real shapes, built on the meta device by our model builders
(``adept_components.models.qwen3_1_7b`` / ``qwen3_8b``, as the YAML ``model`` entry names
them) and materialised directly on the GPU: nothing is downloaded or read from disk. For each
model two methods run, one after the other, each in a fresh process:

- ``full``: every parameter trains, one AdamW over all of them (the recipe's ``method=full``).
- ``adept``: the base model expanded with ``k = 4`` function-preserving copies of the layers the
  paper reports (Qwen3-1.7B: 22, 23, 25, 27; Qwen3-8B: 26, 28, 29, 30), only the copies train,
  one AdamW param group per unit (``unit_optimizer``) under ``UnitScaledScheduler``.

The training step is the recipe's own: the config is ``recipe_configs/qwen3_8b_medical.yaml``
with overrides, an ``AdeptCPTRecipe`` is built from it, the model is handed to it in place of
the checkpoint load, then ``setup_training()`` (activation checkpointing, loss, optimizer, LR
schedule) and ``train_step()`` (forward, chunked CE loss, backward, grad clipping, optimizer
and scheduler step, zero_grad) run unchanged, on random token chunks.

Measured per (model, method): median step time over ``--steps`` steps after ``--warmup``,
tokens/s = batch·seq / step time, peak ``torch.cuda.max_memory_allocated`` (and reserved) over
the whole process (weights, gradients, AdamW state, activations), and model FLOPs utilisation
MFU = tokens/s · FLOPs per token / peak bf16 FLOP/s (``--peak-tflops``, H200 dense: 989).

FLOPs per token: ``common.flops_per_token`` (matmuls only; the derivation is in its
docstring). With ``P`` the matmul weights of one layer, ``H = V·d`` the output head, ``L`` base
layers, ``k`` copies, ``p`` the position of the lowest copy in the expanded model and ``A`` one
layer's attention-score and -value FLOPs in the forward: full ``6·(L·P + H) + 3·L·A``, ADEPT
``2·((L+k)·P + H) + 2·H + 2·(L+k−p)·P + 2·k·P + (L+k)·A + 2·(L+k−p)·A``. Layers below ``p``
build no autograd graph. MFU counts these model FLOPs; activation checkpointing re-runs each
wrapped layer's forward (``2·P + A`` more per layer), counted only in HFU (hardware FLOPs
utilisation), which is printed beside it.

Batch and activation checkpointing: ``full`` takes the largest of ``--batch-sizes`` that fits
without checkpointing, else the largest that fits with it. ``adept`` then runs at the same batch
(the same tokens per step), without checkpointing unless that does not fit. A size that runs out
of memory is retried smaller in a fresh process.

Precision: bf16 weights and compute. The trained weights, their gradients and AdamW state are
in ``--trainable-dtype``: default bf16 (pure bf16, 8 bytes per trained parameter), so that both
models fit both methods; ``fp32`` is the shipped configs' ``trainable_dtype`` (fp32 weights
under bf16 autocast), which for ``full`` means 16 bytes per parameter, 131 GB for Qwen3-8B
before activations: no batch fits one H200 (141 GB), and the table says so.

Run on the GPU machine (after ``bash benchmarks/gpu_setup.sh install``; under 10 minutes)::

    python benchmarks/gpu_throughput.py --json benchmarks/results/gpu_throughput.json \
        --markdown benchmarks/results/gpu_throughput.md

Both files start with the command and its provenance (commit, torch, GPU, date).

End-to-end check on CPU with a tiny Qwen3 (same code path, seconds)::

    python benchmarks/gpu_throughput.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import common
import torch

# The paper's selected layers (spec S1.3) and the tiny smoke-test model.
PAPER_LAYERS = {"qwen3_1_7b": [22, 23, 25, 27], "qwen3_8b": [26, 28, 29, 30]}
TINY_MODEL = {
    "_component_": "adept_components.models.qwen3",
    "vocab_size": 2048,
    "num_layers": 8,
    "num_heads": 4,
    "num_kv_heads": 2,
    "embed_dim": 128,
    "intermediate_dim": 384,
    "head_dim": 32,
    "tie_word_embeddings": True,
}
TINY_LAYERS = [4, 5, 6, 7]
OOM_EXIT = 3
RESULT_PREFIX = "RESULT "


@dataclasses.dataclass(frozen=True)
class Spec:
    """One measured configuration, run in its own process."""

    model: str  # qwen3_1_7b | qwen3_8b | tiny
    method: str  # full | adept
    batch_size: int
    activation_checkpointing: bool
    seq_len: int
    steps: int
    warmup: int
    device: str
    dtype: str
    trainable_dtype: str
    grad_accum: int


# ------------------------------------------------------------------------------ one run


def recipe_config(spec: Spec, output_dir: str) -> Any:
    """``qwen3_8b_medical.yaml`` with the benchmark's overrides (the recipe validates it)."""
    from omegaconf import OmegaConf

    from adept_components.config import load_config

    if spec.model == "tiny":
        model = {**TINY_MODEL, "max_seq_len": spec.seq_len}
        layers = TINY_LAYERS
    else:
        model = {
            "_component_": f"adept_components.models.{spec.model}",
            "max_seq_len": spec.seq_len,
        }
        layers = PAPER_LAYERS[spec.model]
    cfg = load_config(["--config", "qwen3_8b_medical"])
    updates = {
        "output_dir": output_dir,
        "device": spec.device,
        "dtype": spec.dtype,
        "trainable_dtype": spec.trainable_dtype,
        "method": spec.method,
        "model": model,
        "batch_size": spec.batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "max_steps": spec.warmup + spec.steps,
        "enable_activation_checkpointing": spec.activation_checkpointing,
        "expansion.layers": layers,
        "expansion.num_layers": len(layers),
        "dataset.max_seq_len": spec.seq_len,
        "canary.every_n_steps": 0,
        "save_every_n_steps": 0,
        "compile": False,
    }
    for key, value in updates.items():
        OmegaConf.update(cfg, key, value, merge=False)
    OmegaConf.resolve(cfg)
    return cfg


def random_init_(model: torch.nn.Module, copy_positions: list[int]) -> None:
    """Weights ~ N(0, 0.02), norm scales 1; the copies' residual projections 0 (spec S1.4)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("scale"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
        for position in copy_positions:
            layer = model.layers[position]
            layer.attn.output_proj.weight.zero_()
            layer.mlp.w2.weight.zero_()


def measure(spec: Spec) -> dict[str, Any]:
    """Build the model, hand it to the recipe and time its training step."""
    import adept_cpt
    from torchtune import config as tt_config
    from torchtune import training

    from adept_components.config import RunPlan
    from adept_components.data import PackedText
    from adept_components.data.packed_text import CorpusInfo
    from adept_components.expansion import ExpansionMetadata, expand_model
    from adept_components.trainable import Everything, Layers

    with tempfile.TemporaryDirectory() as output_dir:
        cfg = recipe_config(spec, output_dir)
        recipe = adept_cpt.AdeptCPTRecipe(RunPlan.from_config(cfg))
        device, cuda = recipe.device, recipe.device.type == "cuda"
        build = partial(tt_config.instantiate, cfg.model)
        with torch.device("meta"):
            base_layers = len(build().layers)
        metadata = None
        if spec.method == "adept":
            metadata = ExpansionMetadata(base_layers, list(cfg.expansion.layers))
        with training.set_default_dtype(recipe.dtype), torch.device("meta"):
            model = expand_model(build, metadata) if metadata else build()
        model.to_empty(device=device)
        copies = metadata.copy_positions if metadata else []
        random_init_(model, copies)
        with device:
            for module in model.modules():  # RoPE caches: buffers outside the state dict
                if hasattr(module, "rope_init"):
                    module.rope_init()
        trainable_set = Layers(tuple(copies)) if metadata else Everything()
        trainable = trainable_set.apply(model)
        trainable_params, total_params = trainable.trainable_params, trainable.total_params
        numbers = common.layer_numbers(model)

        # What stage 1 leaves behind, then the recipe's own stage-2 setup.
        recipe.model, recipe.metadata = model, metadata
        recipe.trainable = trainable_set
        recipe.resume, recipe.canary = None, None
        chunks = max(spec.batch_size * spec.grad_accum * (spec.warmup + spec.steps), 1)
        vocab = model.tok_embeddings.num_embeddings
        generator = torch.Generator().manual_seed(0)
        recipe.dataset = PackedText(
            torch.randint(0, vocab, (chunks, spec.seq_len), generator=generator),
            CorpusInfo("random", chunks, chunks * spec.seq_len, 0, spec.seq_len),
        )
        recipe.setup_training()
        optimizer_groups = len(recipe.optimizer.param_groups)

        times, losses = [], []
        for _ in range(spec.warmup + spec.steps):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss, _, _ = recipe.train_step()  # the recipe's step; .item() inside syncs
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            losses.append(loss)
            recipe.step += 1
        if cuda:
            peak_alloc = torch.cuda.max_memory_allocated(device)
            peak_reserved = torch.cuda.max_memory_reserved(device)
        else:  # CPU check: the process's peak RSS stands in
            peak_alloc = peak_reserved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        flops = common.flops_per_token(
            numbers,
            len(model.layers),
            spec.seq_len,
            copies or None,
            spec.activation_checkpointing,
        )
    step = statistics.median(times[spec.warmup :])
    tokens = spec.batch_size * spec.grad_accum * spec.seq_len
    return {
        "spec": dataclasses.asdict(spec),
        "step_s": step,
        "step_times": times,
        "tokens_per_s": tokens / step,
        "peak_allocated": peak_alloc,
        "peak_reserved": peak_reserved,
        "trainable_params": trainable_params,
        "total_params": total_params,
        "copy_positions": copies,
        "optimizer_groups": optimizer_groups,
        "layers": len(model.layers),
        "numbers": dataclasses.asdict(numbers),
        "flops_per_token": flops.model,
        "recompute_flops_per_token": flops.recompute,
        "losses": losses,
        "finite": all(math.isfinite(x) for x in losses),
    }


def child_main(spec_json: str) -> None:
    spec = Spec(**json.loads(spec_json))
    try:
        result = measure(spec)
    except torch.OutOfMemoryError as e:
        print(RESULT_PREFIX + json.dumps({"oom": True, "error": str(e).splitlines()[0]}))
        sys.exit(OOM_EXIT)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ parent


def run_child(spec: Spec, timeout_s: float) -> dict[str, Any] | None:
    """Run one spec in a fresh process; None when it ran out of memory."""
    env = dict(os.environ)
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    command = [sys.executable, __file__, "--child", json.dumps(dataclasses.asdict(spec))]
    label = (
        f"{spec.model} {spec.method} batch {spec.batch_size} "
        f"AC {'on' if spec.activation_checkpointing else 'off'}"
    )
    print(f"  {label} ...", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode == OOM_EXIT:
        print(f"    out of memory ({time.perf_counter() - start:.0f}s)", flush=True)
        return None
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{label} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    print(
        f"    {result['step_s']:.3f} s/step, {result['tokens_per_s']:,.0f} tokens/s, peak "
        f"{result['peak_allocated'] / 2**30:.1f} GiB ({time.perf_counter() - start:.0f}s)",
        flush=True,
    )
    return result


def first_fit(specs: list[Spec], timeout_s: float) -> dict[str, Any] | None:
    for spec in specs:
        result = run_child(spec, timeout_s)
        if result is not None:
            return result
    return None


def run_model(model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    def spec(method: str, batch: int, ac: bool) -> Spec:
        return Spec(
            model=model,
            method=method,
            batch_size=batch,
            activation_checkpointing=ac,
            seq_len=args.seq_len,
            steps=args.steps,
            warmup=args.warmup,
            device=args.device,
            dtype=args.dtype,
            trainable_dtype=args.trainable_dtype,
            grad_accum=args.grad_accum,
        )

    ac_options = [False, True] if args.ac == "auto" else [args.ac == "on"]
    candidates = [(b, ac) for ac in ac_options for b in args.batch_sizes]
    full = first_fit([spec("full", b, ac) for b, ac in candidates], args.child_timeout)
    if full is None:
        print(f"  {model} full: no batch size fits", flush=True)
        batches = [(b, ac) for ac in ac_options for b in args.batch_sizes]
    else:
        s = full["spec"]
        batches = [(s["batch_size"], ac) for ac in ac_options]
    adept = first_fit([spec("adept", b, ac) for b, ac in batches], args.child_timeout)
    return [r for r in (full, adept) if r is not None]


def print_report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    lines = [
        "| model | method | batch x seq | act. ckpt | trainable / total params | step [s] | "
        "tokens/s | peak alloc (reserved) [GiB] | GFLOP/token | MFU | HFU | tokens/s vs full | "
        "memory vs full |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_model.setdefault(r["spec"]["model"], {})[r["spec"]["method"]] = r
    for model, methods in by_model.items():
        full = methods.get("full")
        for method in ("full", "adept"):
            r = methods.get(method)
            if r is None:
                continue
            s = r["spec"]
            flops = r["flops_per_token"]
            mfu = f"{100 * r['tokens_per_s'] * flops / peak:.1f}%" if peak else "n/a"
            hfu = (
                f"{100 * r['tokens_per_s'] * (flops + r['recompute_flops_per_token']) / peak:.1f}%"
                if peak
                else "n/a"
            )
            vs_full = (
                f"{r['tokens_per_s'] / full['tokens_per_s']:.2f}x" if full else "n/a",
                f"{r['peak_allocated'] / full['peak_allocated']:.2f}x" if full else "n/a",
            )
            lines.append(
                f"| {model} | {method} | {s['batch_size']} x {s['seq_len']} | "
                f"{'on' if s['activation_checkpointing'] else 'off'} | "
                f"{r['trainable_params'] / 1e9:.3f}B / {r['total_params'] / 1e9:.3f}B | "
                f"{r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                f"{r['peak_allocated'] / 2**30:.1f} ({r['peak_reserved'] / 2**30:.1f}) | "
                f"{flops / 1e9:.2f} | {mfu} | {hfu} | {vs_full[0]} | {vs_full[1]} |"
            )
    lines.append("")
    for model, methods in by_model.items():
        full, adept = methods.get("full"), methods.get("adept")
        if not (full and adept):
            continue
        n = full["numbers"]
        P, H = n["matmul"], n["head"]
        L, k = full["layers"], len(adept["copy_positions"])
        p = min(adept["copy_positions"])
        lines.append(
            f"{model}: P = {P / 1e6:.1f}M matmul weights per layer, H = V·d = {H / 1e6:.1f}M, "
            f"L = {L}, k = {k}, lowest copy at p = {p} of {L + k}, attention width "
            f"{n['attention_width']}, seq {full['spec']['seq_len']}: FLOPs/token full "
            f"6·(L·P + H) + 3·L·A = {full['flops_per_token'] / 1e9:.2f} G, ADEPT "
            f"2·((L+k)·P + H) + 2·H + 2·(L+k−p)·P + 2·k·P + (L+k)·A + 2·(L+k−p)·A = "
            f"{adept['flops_per_token'] / 1e9:.2f} G "
            f"({adept['flops_per_token'] / full['flops_per_token']:.2f}x full); "
            f"optimizer param groups: full {full['optimizer_groups']}, "
            f"ADEPT {adept['optimizer_groups']}."
        )
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["qwen3_1_7b", "qwen3_8b"])
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen3 (CPU smoke test)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument(
        "--trainable-dtype",
        default="bf16",
        choices=["bf16", "fp32"],
        help="dtype of the trained weights, gradients and AdamW state (the configs: fp32)",
    )
    parser.add_argument("--seq-len", type=int, default=None, help="default 4096 (tiny: 128)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 2, 1])
    parser.add_argument("--ac", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 8; tiny 2)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="default 989 on cuda")
    parser.add_argument("--child-timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return

    if args.tiny:
        args.models = ["tiny"]
        args.batch_sizes = args.batch_sizes if "--batch-sizes" in argv else [2]
    args.seq_len = args.seq_len or (128 if args.tiny else 4096)
    args.steps = args.steps or (2 if args.tiny else 8)
    if args.peak_tflops is None and args.device == "cuda":
        args.peak_tflops = 989.0  # H200 SXM, dense bf16
    provenance = common.provenance([__file__, *argv])
    header = f"$ {provenance['command']}\n{common.provenance_line(provenance)}"
    print(header)
    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    )
    print(
        f"torch {torch.__version__}, {device}; {args.dtype}, trained weights "
        f"{args.trainable_dtype}; seq {args.seq_len}; batch sizes "
        f"tried {args.batch_sizes}; activation checkpointing {args.ac}; {args.steps} timed steps "
        f"after {args.warmup}; peak {args.peak_tflops} TFLOP/s"
    )
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    for model in args.models:
        results += run_model(model, args)
    print()
    text = print_report(results, args)
    print(f"\nTotal {time.perf_counter() - start:.0f}s")
    bad = [r["spec"] for r in results if not r["finite"]]
    if bad:
        print(f"WARNING: non-finite losses in {bad}")
    if args.json:
        record = {"command": provenance["command"], "provenance": provenance, "results": results}
        args.json.write_text(json.dumps(record, indent=2))
    if args.markdown:
        args.markdown.write_text(f"{header}\n\n{text}\n")


if __name__ == "__main__":
    main()
