"""Benchmark: what an S2.4 unit-importance refresh costs, as a share of training time.

One *training step* is what the recipe does per optimizer step with one micro-batch: forward,
next-token loss, backward (through the copies and the frozen layers above them), AdamW step
over one param group per unit, and the LR schedule step. One *refresh* is what the recipe does
every ``refresh_every`` steps: ``unit_importance`` over the whole probe set, ``lr_scales`` and
``UnitScaledScheduler.set_scales``. The refresh share of training time at interval ``N`` is::

    refresh / (N · step + refresh)          (goal: <= 3 % at the default N = 500)

Roughly, a refresh is one forward and backward per probe batch without the optimizer, so
the share is about ``num_batches / (N + num_batches)`` when probe and training batches have
the same shape (8 / 508 = 1.6 %).

Run from the repository root (random weights, CPU, fp32; nothing is downloaded)::

    python benchmarks/refresh_cost.py
    python benchmarks/refresh_cost.py --layers 28 --k 4 --probe-batches 16 --threads 2

It prints the command and its provenance (commit, torch, CPU, threads, date), the setup, and a
markdown table with the best and median wall time of ``--repeats`` timed runs of each (after
one warm-up run); ``--json PATH`` also writes the times, the arguments and the provenance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import common
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from adept_components.expansion import ExpansionMetadata, expand_model, uniform_source_layers
from adept_components.importance import unit_importance
from adept_components.optim import UnitScaledScheduler, lr_scales, unit_optimizer
from adept_components.trainable import freeze_all_but


def alternating_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of ``repeats`` calls of each function, after one untimed warm-up call each.

    The functions alternate within each round, so a slow spell on a shared machine hits all.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16, help="base model layers")
    parser.add_argument("--k", type=int, default=4, help="copies (LLaMA-Pro-uniform sources)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4, help="training and probe batch")
    parser.add_argument("--probe-batches", type=int, default=8)
    parser.add_argument("--refresh-every", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    provenance = common.start_timing([__file__, *argv], args.threads, args.seed)
    meta = ExpansionMetadata(args.layers, uniform_source_layers(args.layers, args.k))

    def base() -> torch.nn.Module:
        return common.random_qwen3(args.vocab, args.layers, args.dim, args.seq_len)

    model = expand_model(base, meta)  # random weights: copies are not zero, timing is the same
    trainable = freeze_all_but(model, meta.copy_positions)
    model.train()
    optimizer = unit_optimizer(model, meta.copy_positions, lr=1e-4, weight_decay=0.0)
    scheduler = UnitScaledScheduler(optimizer, LambdaLR(optimizer, lambda step: 1.0))

    generator = torch.Generator().manual_seed(args.seed)

    def random_batch() -> torch.Tensor:
        return torch.randint(0, args.vocab, (args.batch_size, args.seq_len), generator=generator)

    train_tokens = random_batch()
    probe = [
        (tokens, tokens.clone()) for tokens in (random_batch() for _ in range(args.probe_batches))
    ]
    steps = [0]

    def train_step() -> None:
        logits = model(train_tokens)  # [b, s, v]
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, args.vocab), train_tokens[:, 1:].reshape(-1)
        )
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        steps[0] += 1

    def refresh() -> None:
        scores = unit_importance(model, probe)
        scheduler.set_scales(lr_scales(scores), step=steps[0])

    times = alternating_times({"step": train_step, "refresh": refresh}, args.repeats)

    n = args.refresh_every
    print(
        f"Qwen3 random, fp32, CPU, {args.threads} threads: {args.layers} layers + k={args.k} "
        f"copies at {meta.copy_positions} ({trainable}); dim {args.dim}, vocab "
        f"{args.vocab}; training batch {args.batch_size}x{args.seq_len}; probe "
        f"{args.probe_batches} batches of {args.batch_size}x{args.seq_len}; "
        f"{args.repeats} timed runs each (after a warm-up)"
    )
    print()
    print(
        f"| timing | training step (s) | refresh (s) | refresh / step | "
        f"refresh share at N = {n} (goal <= 3 %) |"
    )
    print("|---|---:|---:|---:|---:|")
    for label, pick in (("best", min), ("median", statistics.median)):
        step_s, refresh_s = pick(times["step"]), pick(times["refresh"])
        share = refresh_s / (n * step_s + refresh_s)
        print(
            f"| {label} | {step_s:.4f} | {refresh_s:.4f} | {refresh_s / step_s:.2f} | "
            f"{100 * share:.2f} % |"
        )
    if args.json:
        record = {"provenance": provenance, "args": {**vars(args), "json": str(args.json)}}
        args.json.write_text(json.dumps({**record, "times_s": times}, indent=2))


if __name__ == "__main__":
    main()
