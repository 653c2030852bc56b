"""The text ``adept-cpt plan`` prints: every method side by side, then the config's verdict."""

from __future__ import annotations

from collections.abc import Callable

from adept_components.config import ConfigError
from adept_components.planning.estimate import (
    GIB,
    Batching,
    MethodEstimate,
    Planner,
    SizedModel,
    optimizer_states,
)


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f}"


def _unit(largest: float) -> tuple[Callable[[float], str], str]:
    """A formatter of bytes in GiB (MiB when ``largest`` is under 1 GiB), and the unit."""
    unit, name = (GIB, "GiB") if largest >= GIB else (2**20, "MiB")
    return (lambda nbytes: f"{nbytes / unit:.2f}"), name


def _count(n: int) -> str:
    """``8,190,735,360`` -> ``8.19B``; ``14,160,384`` -> ``14.2M``."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _launch(gpus: int) -> str:
    """The ``tune run`` launcher flags for ``gpus`` GPUs (8 per node)."""
    if gpus == 1:
        return "tune run adept_cpt"
    if gpus <= 8:
        return f"tune run --nproc_per_node {gpus} adept_cpt"
    nodes = -(-gpus // 8)
    return f"tune run --nnodes {nodes} --nproc_per_node {gpus // nodes} adept_cpt (plus rdzv flags)"


def _step_seconds(estimate: MethodEstimate, gpus: int, tflops: float) -> float:
    """Seconds per optimizer step: all FLOPs (recomputation too) of one GPU at ``tflops``."""
    return (estimate.flops_per_step + estimate.recompute_per_step) / gpus / (tflops * 1e12)


def render_plan(
    planner: Planner,
    config: str,
    model_source: str,
    gpus: int,
    gpu_memory_gib: float,
    tflops: float | None = None,
) -> str:
    """What ``adept-cpt plan`` prints.

    Args:
        planner (Planner): the sized methods of the config.
        config (str): the config's name or path, as given.
        model_source (str): where the architecture came from (``estimate.base_builder``).
        gpus (int): GPUs to train on.
        gpu_memory_gib (float): memory per GPU, GiB.
        tflops (float | None): achieved TFLOP/s per GPU, for step and run times.

    Returns:
        str: the report.
    """
    plan, batching = planner.plan, planner.batching
    sized = planner.sized[planner.method]
    assert isinstance(sized, SizedModel)
    model = sized.model
    tokens = batching.tokens(gpus)
    precision = plan.dtype + (", trained weights in fp32" if plan.fp32_trainable else "")
    head = _head_line(planner, gpus)
    lines = [
        f"Plan of {config} (method={planner.method}) on {gpus} GPU{'s' if gpus > 1 else ''} "
        f"of {gpu_memory_gib:g} GiB{' (FSDP2)' if gpus > 1 else ''}",
        f"  model      {model_source}: {sized.base_layers} layers, width "
        f"{model.tok_embeddings.embedding_dim}, vocab {model.tok_embeddings.num_embeddings:,}",
        f"  tokens     {batching.batch_size} sequences x {batching.seq_len} tokens x "
        f"{batching.grad_accum} accumulation x {gpus} GPU{'s' if gpus > 1 else ''} = "
        f"{tokens:,} per step; {plan.train.max_steps:,} steps = "
        f"{_count(tokens * plan.train.max_steps)} tokens",
        f"  precision  {precision}; activation checkpointing "
        f"{'on' if batching.activation_checkpointing else 'off'}; {head}",
        f"  optimizer  {_optimizer_line(planner)}",
        "",
        _table(planner, gpus, tflops),
        "",
    ]
    lines += _placeholders(planner)
    estimate = planner.estimate(planner.method, batching, gpus)
    lines += ["", *_verdict(planner, estimate, batching, gpus, gpu_memory_gib, tflops)]
    return "\n".join(lines)


def _optimizer_line(planner: Planner) -> str:
    cls = planner.plan.optimizer.cls
    states, nbytes = optimizer_states(planner.plan)
    each = "the trained weight's dtype" if nbytes is None else f"{nbytes:g} byte(s)"
    return (
        f"{cls.__name__}: {states} state{'' if states == 1 else 's'} per trained element, in {each}"
    )


def _head_line(planner: Planner, gpus: int) -> str:
    chunks = getattr(planner.loss, "num_output_chunks", 0)
    if planner.defers_head and gpus == 1:
        return f"loss: head deferred, {chunks} chunks recomputed in the backward"
    if planner.defers_head:
        return f"loss: chunked logits ({chunks} chunks; FSDP keeps the head in the model)"
    return f"loss: {'chunked' if chunks else 'whole'} logits" + (
        f" ({chunks} chunks)" if chunks else ""
    )


def _table(planner: Planner, gpus: int, tflops: float | None) -> str:
    """One row per method: layers, parameters, groups, memory per GPU, FLOPs per step."""
    estimates = {
        name: entry
        if isinstance(entry, ConfigError)
        else planner.estimate(name, planner.batching, gpus)
        for name, entry in planner.sized.items()
    }
    peaks = [e.memory.peak for e in estimates.values() if not isinstance(e, ConfigError)]
    size, unit_name = _unit(max(peaks, default=0))
    header = (
        f"{'method':<11}{'layers':>8}{'params':>9}{'trained':>16}{'groups':>7}"
        f"{'weights':>9}{'grads':>7}{'optim':>7}{'act off':>9}{'act on':>8}{'peak':>8}"
        f"{'FLOP/step':>11}" + (f"{'s/step':>8}" if tflops else "")
    )
    rows = [header]
    for name, estimate in estimates.items():
        mark = "<" if name == planner.method else ""
        if isinstance(estimate, ConfigError):
            rows.append(f"{name + mark:<11}  n/a: {estimate}")
            continue
        memory, sized = estimate.memory, estimate.sized
        share = sized.trainable_params / sized.total_params
        row = (
            f"{name + mark:<11}{f'{sized.base_layers}->{sized.num_layers}':>8}"
            f"{_count(sized.total_params):>9}"
            f"{f'{_count(sized.trainable_params)} ({share:.1%})':>16}{sized.param_groups:>7}"
            f"{size(memory.weights + memory.gathered):>9}{size(memory.grads):>7}"
            f"{size(memory.optimizer):>7}{size(estimate.activations_off):>9}"
            f"{size(estimate.activations_on):>8}{size(memory.peak):>8}"
            f"{estimate.flops_per_step + estimate.recompute_per_step:>11.2e}"
        )
        if tflops:
            row += f"{_step_seconds(estimate, gpus, tflops):>8.2f}"
        rows.append(row)
    rows.append(
        f"{unit_name} per GPU. weights: parameters and RoPE buffers (+ FSDP2's gathered root "
        "and two layers); act off/on: activations without/with activation checkpointing; "
        "peak: the step's peak with the config's checkpointing (not the sum: parameter "
        "gradients grow as activations are freed); FLOP/step: all GPUs, recomputation "
        "included. < marks the config's method."
    )
    return "\n".join(rows)


def _placeholders(planner: Planner) -> list[str]:
    """Each stand-in note once, with the methods it applies to."""
    notes: dict[str, list[str]] = {}
    for name, entry in planner.sized.items():
        if isinstance(entry, SizedModel) and entry.placeholder:
            notes.setdefault(entry.placeholder, []).append(name)
    return [f"{', '.join(names)}: {note}" for note, names in notes.items()]


def _verdict(
    planner: Planner,
    estimate: MethodEstimate,
    batching: Batching,
    gpus: int,
    gpu_memory_gib: float,
    tflops: float | None,
) -> list[str]:
    """The config's method: its memory, FLOPs, times, and whether (or how) it fits."""
    memory, sized, plan = estimate.memory, estimate.sized, planner.plan
    checkpointing = "on" if batching.activation_checkpointing else "off"
    size, unit = _unit(memory.peak)
    lines = [
        f"method={planner.method} trains {sized.trains}: {sized.trainable_params:,} of "
        f"{sized.total_params:,} parameters, {sized.param_groups} param "
        f"group{'' if sized.param_groups == 1 else 's'}, "
        f"{sized.base_layers} -> {sized.num_layers} layers",
        f"memory per GPU ({unit}): weights {size(memory.weights)}"
        + (f" + gathered {size(memory.gathered)}" if memory.gathered else "")
        + f", gradients {size(memory.grads)}, optimizer state {size(memory.optimizer)}, "
        f"activations {size(memory.activations)} (checkpointing {checkpointing}), optimizer "
        f"step temporaries {size(memory.optimizer_temp)} -> peak {size(memory.peak)}",
        f"FLOPs per step: {estimate.flops_per_step:.3e} model"
        + (
            f" + {estimate.recompute_per_step:.3e} recomputed"
            if estimate.recompute_per_step
            else ", nothing recomputed"
        )
        + f"; {estimate.flops_per_step / batching.tokens(gpus):.3e} per token",
    ]
    if tflops:
        step = _step_seconds(estimate, gpus, tflops)
        lines.append(
            f"at {tflops:g} TFLOP/s per GPU: {step:.2f} s per step, "
            f"{_duration(step * plan.train.max_steps)} for {plan.train.max_steps:,} steps"
        )
    limit = gpu_memory_gib * GIB
    if memory.peak <= limit:
        lines.append(
            f"Fits {gpu_memory_gib:g} GiB per GPU: peak {_gib(memory.peak)} GiB, "
            f"{_gib(limit - memory.peak)} GiB left (the CUDA context and fragmentation take "
            "1-3 GiB of it)"
        )
        return lines
    lines.append(f"Does not fit {gpu_memory_gib:g} GiB per GPU: peak {_gib(memory.peak)} GiB.")
    fix = planner.fix(batching, gpus, limit)
    if fix is None:
        lines.append(
            "Nothing tried fits (checkpointing, batch_size=1, up to 4096 GPUs): lower "
            "dataset.max_seq_len or choose a method that trains less"
        )
        return lines
    change = " ".join(fix.overrides)
    where = f"on {fix.gpus} GPUs ({_launch(fix.gpus)} ...)" if fix.gpus != gpus else ""
    same = "the same" if fix.tokens_per_step == batching.tokens(gpus) else "now"
    lines.append(
        "Smallest change that fits: "
        + " ".join(part for part in (f"add {change}" if change else "", where) if part)
        + f" -> peak {_gib(fix.estimate.memory.peak)} GiB, {same} {fix.tokens_per_step:,} "
        "tokens per step"
    )
    return lines
