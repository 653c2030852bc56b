"""Benchmark: cached mask-out layer importance (spec S1.2) against the naive method.

The naive method runs ``L + 1`` full forwards (the base model, then the model with each layer
taken out of ``model.layers``): ``L + L·(L−1) = L²`` layer forwards. The cached method
(``adept_components.importance.mask_out_losses``) runs each batch through the layers once,
keeps the hidden state entering every layer, and resumes each skip from it:
``L + L·(L−1)/2`` layer forwards, a ratio of ``(L + 1) / (2L)`` (0.53 at L = 16) before the
output head, which both pay ``L + 1`` times per batch.

Run from the repository root (random weights, CPU, fp32; nothing is downloaded)::

    python benchmarks/probe_cached_vs_naive.py
    python benchmarks/probe_cached_vs_naive.py --layers 28 --threads 2

It prints the command and its provenance (commit, torch, CPU, threads, date), checks that both
methods give the same scores (max abs difference), and prints a markdown table row with the
best-of-``--repeats`` wall time of each; ``--json PATH`` also writes them with the provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import common
import torch
import torch.nn.functional as F
from torch import nn

from adept_components.importance import mask_out_importance

IGNORE = -100


def naive_mask_out(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> list[float]:
    """I(l) from ``L + 1`` full forwards, each with layer ``l`` removed from ``model.layers``."""

    def loss() -> float:
        total, count = 0.0, 0
        for tokens, labels in batches:
            logits = model(tokens)  # [b, s, v]
            targets = labels[:, 1:]
            total += F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            ).item()
            count += int((targets != IGNORE).sum())
        return total / count

    layers = model.layers
    with torch.no_grad():
        base = loss()
        scores = []
        try:
            for skipped in range(len(layers)):
                model.layers = nn.ModuleList(m for i, m in enumerate(layers) if i != skipped)
                scores.append(loss() - base)
        finally:
            model.layers = layers
    return scores


def best_times(
    methods: dict[str, Callable[[], list[float]]], repeats: int
) -> dict[str, tuple[float, list[float]]]:
    """Best wall time over ``repeats`` rounds of each method, and its result.

    The methods alternate within each round, so a slow spell on a shared machine hits both.
    """
    results: dict[str, tuple[float, list[float]]] = {}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            scores = fn()
            elapsed = time.perf_counter() - start
            results[name] = (min(elapsed, results.get(name, (float("inf"),))[0]), scores)
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    provenance = common.start_timing([__file__, *argv], args.threads, args.seed)
    model = common.random_qwen3(args.vocab, args.layers, args.dim, args.seq_len).eval()
    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.num_batches):
        tokens = torch.randint(0, args.vocab, (args.batch_size, args.seq_len), generator=generator)
        batches.append((tokens, tokens.clone()))  # plain text: every token counts

    timings = best_times(
        {
            "cached": lambda: mask_out_importance(model, batches),
            "naive": lambda: naive_mask_out(model, batches),
        },
        args.repeats,
    )
    (cached_s, cached), (naive_s, naive) = timings["cached"], timings["naive"]
    diff = max(abs(a - b) for a, b in zip(cached, naive, strict=True))
    layer_fwd_ratio = (args.layers + 1) / (2 * args.layers)

    print(
        f"Qwen3 random: {args.layers} layers, dim {args.dim}, vocab {args.vocab}; "
        f"{args.num_batches} batches of {args.batch_size}x{args.seq_len} tokens; "
        f"{args.threads} threads; best of {args.repeats}; "
        f"layer-forward ratio (L+1)/(2L) = {layer_fwd_ratio:.3f}"
    )
    print()
    print("| layers | tokens | cached (s) | naive (s) | cached / naive | max abs diff of I(l) |")
    print("|---:|---:|---:|---:|---:|---:|")
    tokens = args.num_batches * args.batch_size * args.seq_len
    print(
        f"| {args.layers} | {tokens} | {cached_s:.3f} | {naive_s:.3f} | "
        f"{cached_s / naive_s:.3f} | {diff:.2e} |"
    )
    if args.json:
        record = {"provenance": provenance, "args": {**vars(args), "json": str(args.json)}}
        record.update(cached_s=cached_s, naive_s=naive_s, max_abs_diff=diff, tokens=tokens)
        args.json.write_text(json.dumps(record, indent=2))
    if diff > 1e-5:
        raise SystemExit(f"cached and naive scores differ by {diff:.2e}")


if __name__ == "__main__":
    main()
