"""Step time of ADEPT against full CPT on Gemma 3 270M, beside the FLOP floor of that ratio.

Gemma 3 270M's tied head (262,144 x 640) is about 60% of a forward's matmul FLOPs at 256
tokens, and it stays in every step: ADEPT's copies are deep enough that the backward still
passes through the head (its input gradient) and every layer above the lowest copy. So ADEPT
cannot be much cheaper than full training here; the floor (``common.flops_per_token``) says by
how much at best. Both methods run the same real weights, the same ``<bos>``-led token batches,
AdamW, and the recipe's loss two ways: the deferred head (``ChunkedHeadCrossEntropy``, the head
applied a chunk at a time and recomputed in the backward) and whole logits (torchtune's way:
every chunk's logits kept for the backward). Steps of the four variants are interleaved, round
after round, so a slower moment of the machine hits all of them; medians are reported.

Run (after ``benchmarks/prepare_gemma3.py``)::

    python benchmarks/step_time_gemma3.py --model-dir ~/models/gemma-3-270m --rounds 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from common import flops_per_token, layer_numbers, results_dir, start_timing

SOURCES = (3, 8, 12, 17)  # LLaMA-Pro's uniform choice for k = 4 of 18 layers


def build(model_dir: Path, seq_len: int, copies: bool) -> tuple[torch.nn.Module, list[int] | None]:
    """The real model (expanded with ``SOURCES`` when ``copies``), what trains, and where."""
    from adept_components.checkpointing import HFCheckpointer
    from adept_components.checkpointing.materialize import materialize
    from adept_components.expansion import (
        ExpansionMetadata,
        copy_fills,
        expand_model,
        expand_state_dict,
    )
    from adept_components.trainable import freeze_all_but

    checkpointer = HFCheckpointer(str(model_dir), "/tmp/unused")
    arch = checkpointer.architecture
    state = checkpointer.load_state_dict()
    if not copies:
        model = materialize(
            lambda: arch.build(seq_len), state, arch.family, torch.device("cpu"), torch.float32
        )
        model.requires_grad_(True)
        return model, None
    meta = ExpansionMetadata(arch.num_layers, SOURCES)
    state = expand_state_dict(state, meta, copy_fills(arch.family_record))
    model = materialize(
        lambda: expand_model(arch, meta, seq_len),
        state,
        arch.family,
        torch.device("cpu"),
        torch.float32,
    )
    freeze_all_but(model, meta.copy_positions)
    return model, meta.copy_positions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("~/models/gemma-3-270m"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    record = start_timing(sys.argv, args.threads, seed=0)
    from adept_components.losses import ChunkedHeadCrossEntropy, shift_labels

    tokens = torch.randint(3, 262_144, (args.batch_size, args.seq_len))
    tokens[:, 0] = 2  # <bos>
    targets = shift_labels(tokens)
    loss_fn = ChunkedHeadCrossEntropy(num_output_chunks=8)
    runs = {}
    for method in ("full", "adept"):
        model, trained = build(args.model_dir.expanduser(), args.seq_len, copies=method == "adept")
        model.set_num_output_chunks(loss_fn.num_output_chunks)
        params = [p for p in model.parameters() if p.requires_grad]
        runs[method] = (model, torch.optim.AdamW(params, lr=1e-5), trained)

    times: dict[str, list[float]] = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for method, (model, optimizer, _) in runs.items():
            for head in ("deferred", "whole_logits"):
                model.defer_head = head == "deferred"
                start = time.perf_counter()
                loss_fn(model(tokens), targets).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if round_:
                    times.setdefault(f"{method}/{head}", []).append(time.perf_counter() - start)
        print(f"round {round_}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))

    medians = {k: statistics.median(v) for k, v in times.items()}
    full_model = runs["full"][0]
    numbers = layer_numbers(full_model)
    full_flops = flops_per_token(numbers, len(full_model.layers), args.seq_len).model
    adept_model, _, trained = runs["adept"]
    adept_flops = flops_per_token(numbers, len(adept_model.layers), args.seq_len, trained).model
    result = {
        "provenance": record,
        "batch": [args.batch_size, args.seq_len],
        "copies_of": list(SOURCES),
        "seconds": times,
        "median_seconds": medians,
        "ratio_adept_over_full": {
            head: medians[f"adept/{head}"] / medians[f"full/{head}"]
            for head in ("deferred", "whole_logits")
        },
        "flop_floor_adept_over_full": adept_flops / full_flops,
        "head_share_of_forward_flops": 2
        * numbers.head
        / (2 * (len(full_model.layers) * numbers.matmul + numbers.head)),
        "deferred_over_whole_logits": {
            m: medians[f"{m}/deferred"] / medians[f"{m}/whole_logits"] for m in ("full", "adept")
        },
    }
    path = results_dir() / "step_time_gemma3.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("provenance", "seconds")}, indent=2
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
