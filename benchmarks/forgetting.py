"""Benchmark: the learning-forgetting frontier of every method, with seeds and intervals.

Continual pretraining on a domain teaches the domain and erodes general competence. At an equal
token budget, which method's general loss rises least for the domain it gains? Every run goes
through the real recipe (``adept_cpt.main`` with the preset's config and overrides); runs
differ only in method, learning rate, seed and the overrides a line names. The protocol:

- one stage-1 probe per model (a ``stage1_only`` run), reused by every run that selects by it
  (``expansion.profile``);
- the same data order per seed (the recipe's order is a function of the seed alone);
- held-out sets disjoint by document from the training and probe text: general sets of
  styles the domain corpus does not share (Wikipedia leads outside the domain, State of the
  Union speeches, a novel: Austen's *Persuasion*) and the domain's held-out documents, each
  scored per document, with the base model's losses beside them;
- each run's final checkpoint is evaluated and deleted; its record is written to the JSON
  at once, and a rerun skips every run the JSON has (resumable across sessions).

Presets (``--model``): ``tiny`` (a 12-layer Qwen3 this script pretrains on Austen, CPT on
Metamath maths; everything offline), ``smollm2`` (SmolLM2-135M-Instruct) and ``gemma3``
(Gemma 3 270M base), with ``--domain medical|maths``. Lines of a preset: learning-rate sweeps
of ``full``, ``adept`` and ``lora``; LLaMA-Pro, ``random`` (three seeds), the ``rank`` probe
and Spectrum near ADEPT's best rate; ``full`` and ``adept`` with 10 % replay; three training
seeds at the decisive points (ADEPT's best; full CPT at the rate of its frontier, the rates no
other rate beats on both axes, whose domain gain is closest to it; LLaMA-Pro; LoRA's best).

Statistics: a point with seeds is their mean, its bar their range. Each method's loss
difference from full CPT (same seeds, same held-out tokens) gets a paired bootstrap 95 %
interval over held-out documents; the verdict claims a difference only where it excludes zero.

Results: ``benchmarks/results/forgetting_{model}_{domain}{tag}.{json,md,png}`` (a ``--quick``
smoke run's under the ignored ``benchmarks/.cache/quick_results/``); the JSON carries the
commands, commits, libraries and machine of every invocation. Examples::

    python benchmarks/forgetting.py --model gemma3 --domain medical --pilot   # budget pilot
    python benchmarks/forgetting.py --model gemma3 --domain medical           # hours on a CPU
    python benchmarks/forgetting.py --model gemma3 --domain medical --device cuda
    python benchmarks/forgetting.py --model tiny --quick                      # smoke run
    python benchmarks/forgetting.py --model gemma3 --report-only              # .md/.png again

Real models need ``prepare_gemma3.py`` / ``prepare_smollm2.py`` and ``prepare_real_text.py``
first (``--model-dir``, ``--data-dir``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import common
import torch
from omegaconf import OmegaConf
from torch import nn
from torchtune import config as tt_config

from adept_components.checkpointing import HFCheckpointer
from adept_components.config import asset_path, resolve_config
from adept_components.data import probe_batches, probe_dataset
from adept_components.expansion import load_expansion_metadata
from adept_components.losses import shift_labels
from adept_components.models import model_from_hf_config

FORMAT = "adept-forgetting-v2"
CACHE_DIR = common.CACHE_DIR / "forgetting"
DEMO = Path(asset_path("demo"))
LITERATURE = DEMO / "general_heldout.txt"  # Austen's Persuasion: no model here trained on it


@dataclasses.dataclass(frozen=True)
class Domain:
    """A domain: its training text and held-out documents (paths under the data directory,
    or absolute)."""

    train: str
    heldout: str


@dataclasses.dataclass(frozen=True)
class Preset:
    """A model and what every run on it shares.

    Attributes:
        config (str): the recipe config the runs override.
        model_dir (str): default ``--model-dir`` (empty: the tiny base model is built here).
        domains (dict): the domains it runs.
        general (dict): general held-out sets, name -> file (under the data directory).
        steps, batch_size, seq_len, k, refresh_every, warmup: the budget and method knobs.
        samples (dict): held-out documents per set (``"domain"`` and ``"general"``).
        sweeps (dict): per domain, method -> learning rates of its frontier line.
        near_best (tuple[str, ...]): lines run at ADEPT's best rate (``near_best_lines``).
        seeds (tuple[int, ...]): training seeds of the decisive points.
    """

    config: str
    model_dir: str
    domains: dict[str, Domain]
    general: dict[str, str]
    steps: int
    batch_size: int
    seq_len: int
    k: int
    refresh_every: int
    warmup: int
    samples: dict[str, int]
    sweeps: dict[str, dict[str, tuple[float, ...]]]
    near_best: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


REAL_GENERAL = {
    "general_wiki": "general_heldout_wiki.txt",
    "general_speech": "general_heldout_speech.txt",
    "general_literature": str(LITERATURE),
}
REAL_DOMAINS = {
    "medical": Domain("medical_train.txt", "medical_heldout.txt"),
    "maths": Domain("maths_train.txt", "maths_heldout.txt"),
}
NEAR_BEST_ALL = ("llama_pro", "random", "rank", "spectrum", "replay", "interference")
PRESETS: dict[str, Preset] = {
    # The budget of Gemma 3 is the pilot's (BENCHMARKS.md): 50 steps of 4 x 256 tokens.
    "gemma3": Preset(
        config="gemma3_270m_medical",
        model_dir="~/models/gemma-3-270m",
        domains=REAL_DOMAINS,
        general=REAL_GENERAL,
        steps=50,
        batch_size=4,
        seq_len=256,
        k=4,
        refresh_every=25,
        warmup=5,
        samples={"general": 64, "domain": 128},
        sweeps={
            "medical": {
                "full": (3e-6, 1e-5, 3e-5, 1e-4),  # 3e-6: full's frontier at ADEPT's gains
                "adept": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),  # to past its best (gain - general)
                "lora": (1e-4, 3e-4, 1e-3),  # 1e-4: 3e-4 already forgot +0.15
            },
            # Medical's lessons: full's frontier lies at 3e-6..3e-5 (1e-4 gains less and
            # forgets most), ADEPT's best at 3e-3 with its top gain at 1e-2, LoRA's at 1e-4.
            "maths": {"full": (3e-6, 1e-5, 3e-5), "adept": (1e-3, 3e-3, 1e-2), "lora": (1e-4,)},
        },  # fmt: skip
        near_best=NEAR_BEST_ALL,
    ),
    "smollm2": Preset(
        config="smollm2_135m_medical",
        model_dir="~/models/SmolLM2-135M-Instruct",
        domains=REAL_DOMAINS,
        general=REAL_GENERAL,
        steps=100,
        batch_size=4,
        seq_len=256,
        k=4,
        refresh_every=25,
        warmup=10,
        samples={"general": 64, "domain": 128},
        sweeps={
            "medical": {
                "full": (1e-5, 3e-5, 1e-4),
                "adept": (3e-4, 1e-3, 3e-3),
                "lora": (1e-4, 3e-4, 1e-3),
            },
            "maths": {"full": (1e-5, 3e-5, 1e-4), "adept": (3e-4, 1e-3, 3e-3), "lora": (3e-4,)},
        },  # fmt: skip
        near_best=NEAR_BEST_ALL,
    ),
    "tiny": Preset(
        config="tiny_demo",
        model_dir="",
        domains={"maths": Domain(str(DEMO / "domain.txt"), str(DEMO / "domain_heldout.txt"))},
        general={"general_literature": str(LITERATURE)},
        steps=200,
        batch_size=8,
        seq_len=256,
        k=3,
        refresh_every=25,
        warmup=10,
        samples={"general": 64, "domain": 128},
        sweeps={"maths": {"full": (2e-4, 1e-3), "adept": (3e-4, 1e-3), "lora": (1e-3, 3e-3)}},
        near_best=("llama_pro",),
    ),
}
QUICK = {"steps": 4, "refresh_every": 2, "warmup": 1, "samples": {"general": 4, "domain": 4},
         "seeds": (0, 1)}  # fmt: skip
# What each line does on top of its method: the rank probe, 10 % general replay.
RANK = ("expansion.importance=rank",)
INTERFERENCE = ("expansion.importance=interference",)  # its own stage 1 per seed
REPLAY_WEIGHT = 0.1
# Setting fields a record's runs must share (a rerun with other values needs its own --tag).
BUDGET_KEYS = ("steps", "batch_size", "seq_len", "k", "warmup", "refresh_every", "samples")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One recipe run.

    Attributes:
        name (str): its key in the results (``{line}_lr{lr}`` plus ``_s{seed}`` when seed > 0).
        method (str): the recipe ``method``.
        lr (float): ``optimizer.lr``.
        seed (int): the recipe ``seed`` (data order, random selection, adapter init).
        line (str): the frontier line it belongs to (the method, or a variant: ``adept+replay``).
        overrides (tuple[str, ...]): further recipe overrides of the line.
        profile (bool): read the stage-1 profile (methods that select by the mask-out probe).
    """

    name: str
    method: str
    lr: float
    seed: int = 0
    line: str = ""
    overrides: tuple[str, ...] = ()
    profile: bool = True


def spec(line: str, method: str, lr: float, seed: int = 0, overrides: tuple[str, ...] = (),
         profile: bool = True) -> RunSpec:  # fmt: skip
    """A run of ``line`` at ``lr`` and ``seed``, named after them."""
    name = f"{line}_lr{lr:g}" + (f"_s{seed}" if seed else "")
    return RunSpec(name, method, lr, seed, line, overrides, profile)


# ------------------------------------------------------------------------------ the plan


def replay_overrides(args: argparse.Namespace) -> tuple[str, ...]:
    """``dataset`` as a mixture: the domain at 0.9, general text at 0.1 (by chunks)."""
    domain = resolve(args, args.domain_spec.train)
    general = args.data_dir / "general_corpus.txt" if args.model != "tiny" else DEMO / "general.txt"
    sources = (
        f'[{{source: "{domain}", weight: {1 - REPLAY_WEIGHT:g}}}, '
        f'{{source: "{general}", weight: {REPLAY_WEIGHT:g}}}]'
    )
    return (
        "dataset._component_=adept_components.data.mixed_text_dataset",
        "~dataset.source",
        f"+dataset.sources={sources}",
    )


def score(run: dict[str, Any]) -> float:
    """The trade-off a learning rate is chosen by: domain gain minus general increase."""
    return run["domain_gain"] - run["general_increase"]


def lines_of(runs: dict[str, dict[str, Any]], line: str, seed: int = 0) -> list[dict[str, Any]]:
    return [r for r in runs.values() if r["line"] == line and r["seed"] == seed]


def pareto(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of a line that no other run of it beats: none gains as much with no more
    general increase (one of the two strictly). A rate past the line's best can gain less
    and forget more (full CPT's lr 1e-4 on Gemma 3); such a run is off the frontier."""

    def beats(o: dict[str, Any], r: dict[str, Any]) -> bool:
        a, b = (
            (o["domain_gain"], -o["general_increase"]),
            (r["domain_gain"], -r["general_increase"]),
        )
        return a != b and a[0] >= b[0] and a[1] >= b[1]

    return [r for r in group if not any(beats(o, r) for o in group)]


def best_lr(runs: dict[str, dict[str, Any]], line: str) -> float | None:
    """The sweep's best rate by ``score`` (None until the line has runs)."""
    found = lines_of(runs, line)
    return max(found, key=score)["lr"] if found else None


def plan(preset: Preset, domain: str, runs: dict[str, dict[str, Any]],
         args: argparse.Namespace) -> list[RunSpec]:  # fmt: skip
    """Every run of the preset that the results so far determine, in the order to run them.

    The sweeps come first. Once they are in ``runs``: LLaMA-Pro at ADEPT's best rate, the
    other seeds of the decisive points (the verdict rests on them, so they come before the
    lines that only widen the picture), stage 1 by interference per seed, then the remaining
    lines near ADEPT's best rate in ``preset.near_best`` order.
    """
    sweeps = preset.sweeps[domain]
    specs = [spec(m, m, lr, profile=m != "lora") for m in sweeps for lr in sweeps[m]]
    swept = all(s.name in runs for s in specs)
    adept = best_lr(runs, "adept") if swept else None
    if adept is None:
        return specs
    near = {
        "llama_pro": [spec("llama_pro", "llama_pro", adept)],
        "random": [spec("random", "random", adept, seed) for seed in preset.seeds],
        "rank": [spec("adept+rank", "adept", adept, overrides=RANK, profile=False)],
        "spectrum": [spec("spectrum", "spectrum", lr) for lr in sweeps["full"][-2:]],
        "replay": [spec("adept+replay", "adept", adept, overrides=replay_overrides(args))],
        "interference": [  # stage 1 by interference, probed per seed
            spec("adept+interference", "adept", adept, seed, INTERFERENCE, profile=False)
            for seed in preset.seeds
        ],
    }
    gain = next(r for r in lines_of(runs, "adept") if r["lr"] == adept)["domain_gain"]
    frontier = pareto(lines_of(runs, "full"))
    full = min(frontier, key=lambda r: abs(r["domain_gain"] - gain))["lr"]
    if "replay" in preset.near_best:
        near["replay"].append(spec("full+replay", "full", full, overrides=replay_overrides(args)))
    llama_pro = "llama_pro" in preset.near_best or args.model == "tiny"
    if llama_pro:
        specs += near["llama_pro"]
    lora = best_lr(runs, "lora")
    for seed in preset.seeds[1:]:
        specs += [spec("adept", "adept", adept, seed), spec("full", "full", full, seed)]
        if llama_pro:
            specs.append(spec("llama_pro", "llama_pro", adept, seed))
        if lora is not None:
            specs.append(spec("lora", "lora", lora, seed, profile=False))
    rest = [line for line in preset.near_best if line not in ("llama_pro", "interference")]
    for line in ["interference"] * ("interference" in preset.near_best) + rest:
        specs += near[line]
    return specs


# ------------------------------------------------------------------------------ evaluation


def resolve(args: argparse.Namespace, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else args.data_dir / path


class Evaluator:
    """Per-document held-out losses of a checkpoint: every general set and the domain's."""

    def __init__(self, args: argparse.Namespace, preset: Preset) -> None:
        self.device = torch.device(args.device)
        self.seq_len = preset.seq_len
        cfg = OmegaConf.load(resolve_config(preset.config))
        section = OmegaConf.to_container(cfg.tokenizer, resolve=False)
        section.update(path=str(args.model_dir), max_seq_len=preset.seq_len)
        tokenizer = tt_config.instantiate(OmegaConf.create(section))
        sets = {**preset.general, "domain": args.domain_spec.heldout}
        self.batches = {}
        for name, filename in sets.items():
            count = preset.samples["domain" if name == "domain" else "general"]
            data = probe_dataset(
                tokenizer,
                str(resolve(args, filename)),
                num_samples=count,
                max_seq_len=preset.seq_len,
            )
            self.batches[name] = probe_batches(data, 8)

    def load(self, directory: Path) -> nn.Module:
        model = model_from_hf_config(str(directory), max_seq_len=self.seq_len)
        HFCheckpointer(str(directory), str(directory)).load_into(model)
        return model.to(device=self.device, dtype=torch.float32).eval()

    def doc_losses(self, model: nn.Module) -> dict[str, list[list[float]]]:
        """Set -> per document ``[summed loss, tokens]``, in the set's order."""
        return {name: document_losses(model, b) for name, b in self.batches.items()}


@torch.inference_mode()
def document_losses(model: nn.Module, batches: list) -> list[list[float]]:
    """``[summed next-token loss, supervised tokens]`` of every sequence of ``batches``."""
    device = next(model.parameters()).device
    out = []
    for tokens, labels in batches:
        tokens, labels = tokens.to(device), labels.to(device)
        h = model.tok_embeddings(tokens)
        for layer in model.layers:
            h = layer(h)
        targets = shift_labels(labels)
        for row in range(tokens.shape[0]):
            keep = targets[row] != -100
            logits = model.output(model.norm(h[row][keep])).float()
            loss = nn.functional.cross_entropy(logits, targets[row][keep], reduction="sum")
            out.append([loss.item(), int(keep.sum())])
    return out


def mean_loss(docs: list[list[float]]) -> float:
    return sum(d[0] for d in docs) / sum(d[1] for d in docs)


def summarise(docs: dict[str, list[list[float]]], base: dict[str, float]) -> dict[str, Any]:
    """Losses, deltas from the base, domain gain and the mean general increase."""
    losses = {name: mean_loss(d) for name, d in docs.items()}
    general = [name for name in losses if name != "domain"]
    deltas = {name: losses[name] - base[name] for name in losses}
    return {
        "losses": losses,
        "deltas": deltas,
        "domain_gain": -deltas["domain"],
        "general_increase": sum(deltas[n] for n in general) / len(general),
    }


# ------------------------------------------------------------------------------ one run


def base_overrides(args: argparse.Namespace, preset: Preset, output_dir: Path,
                   run: RunSpec) -> list[str]:  # fmt: skip
    s = preset.seq_len
    overrides = [
        f"output_dir={output_dir}",
        f"checkpointer.checkpoint_dir={args.model_dir}",
        f"dataset.source={resolve(args, args.domain_spec.train)}",
        f"seed={run.seed}",
        f"device={args.device}",
        f"model.max_seq_len={s}",
        f"tokenizer.max_seq_len={s}",
        f"dataset.max_seq_len={s}",
        f"dataset.cache_dir={CACHE_DIR / 'token_cache'}",
        f"batch_size={args.preset.batch_size}",
        f"max_steps={preset.steps}",
        f"lr_scheduler.num_warmup_steps={preset.warmup}",
        f"expansion.num_layers={preset.k}",
        f"unit_tuning.refresh_every={preset.refresh_every}",
        "canary.every_n_steps=0",
        "save_every_n_steps=0",
        "log_every_n_steps=1",
    ]
    if args.model != "tiny":
        overrides.append(f"data_dir={args.data_dir}")
    if args.device == "cuda":
        overrides += ["dtype=bf16", "trainable_dtype=fp32"]
    return overrides + list(args.override)


def execute(args: argparse.Namespace, run: RunSpec, profile: Path, evaluator: Evaluator,
            base: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """One recipe run, evaluated; its checkpoint is deleted once measured."""
    preset = args.preset
    output_dir = CACHE_DIR / f"runs_{args.stem}" / run.name
    shutil.rmtree(output_dir, ignore_errors=True)
    argv = ["--config", preset.config, *base_overrides(args, preset, output_dir, run)]
    argv += [f"method={run.method}", f"optimizer.lr={run.lr}", *run.overrides]
    if run.profile:
        argv.append(f"expansion.profile={profile}")
    wall, messages = common.run_recipe(argv)
    rows = common.read_metric_log(output_dir / "logs")
    seconds, _ = common.step_times(rows, preset.batch_size * (preset.seq_len - 1))
    trainable, total = common.trainable_counts(messages)
    final = output_dir / "final"
    metadata = load_expansion_metadata(final)
    docs = evaluator.doc_losses(evaluator.load(final))
    record = {
        **dataclasses.asdict(run),
        **summarise(docs, base),
        "doc_losses": docs,
        "trainable": trainable,
        "total": total,
        "layers": common.copied_layers(messages),
        "copy_positions": list(metadata.copy_positions) if metadata else None,
        "step_s_median": statistics.median(seconds[2:] or seconds),
        "wall_s": wall,
        "unit_scales": common.latest_values(rows, "scale/"),
    }
    shutil.rmtree(output_dir, ignore_errors=True)
    print(
        f"--> {run.name}: general {record['general_increase']:+.4f} "
        f"({', '.join(f'{k} {v:+.4f}' for k, v in record['deltas'].items() if k != 'domain')}), "
        f"domain gain {record['domain_gain']:+.4f}, {record['step_s_median']:.2f} s/step, "
        f"wall {wall:.0f}s",
        flush=True,
    )
    return record


def ensure_profile(args: argparse.Namespace) -> Path:
    """Stage 1 once per model: a ``stage1_only`` run whose profile every run reuses."""
    out = CACHE_DIR / f"stage1_{args.model}{'_quick' if args.quick else ''}"
    profile = out / "profile" / "layer_importance.json"
    if profile.is_file():
        return profile
    shutil.rmtree(out, ignore_errors=True)
    argv = ["--config", args.preset.config,
            *base_overrides(args, args.preset, out, RunSpec("stage1", "adept", 1e-4))]  # fmt: skip
    common.run_recipe([*argv, "method=adept", "stage1_only=true"])
    shutil.rmtree(out / "final", ignore_errors=True)
    return profile


# ------------------------------------------------------------------------------ tiny base


def ensure_tiny_base(quick: bool) -> Path:
    """The tiny preset's base model: a Qwen3 pretrained here on Austen (cached)."""
    common.use_tools()
    from build_demo import DEMO_ARCHITECTURE, pretrain

    from adept_components.models.tokenizers import qwen3_tokenizer

    arch = dataclasses.replace(
        DEMO_ARCHITECTURE,
        **(
            {"num_layers": 4, "num_heads": 2, "num_kv_heads": 1, "embed_dim": 64,
             "intermediate_dim": 192}
            if quick
            else {"num_layers": 12, "num_heads": 8, "num_kv_heads": 4, "embed_dim": 256,
                  "intermediate_dim": 768, "head_dim": 32}
        ),
    )  # fmt: skip
    steps, batch, seq, lr = (200 if quick else 600), 8, 256, 2e-3
    out = CACHE_DIR / f"base_L{arch.num_layers}_d{arch.embed_dim}_steps{steps}_b{batch}x{seq}"
    if (out / "pretrain.json").is_file():
        return out
    tokenizer_dir = DEMO / "base_model"
    tokenizer = qwen3_tokenizer(str(tokenizer_dir))
    stream: list[int] = []
    for paragraph in (DEMO / "general.txt").read_text().split("\n\n"):
        stream += tokenizer.encode(paragraph, add_bos=False, add_eos=True)
    torch.manual_seed(0)
    model = arch.build()
    with torch.no_grad():  # torchtune leaves nn.Embedding at N(0, 1): huge tied logits at step 0
        model.tok_embeddings.weight.normal_(0.0, 0.02)
    start = time.perf_counter()
    losses = pretrain(model, torch.tensor(stream), steps, seq_len=seq, batch_size=batch, lr=lr,
                      seed=0)  # fmt: skip
    record = {"steps": steps, "tokens": steps * batch * seq, "final_loss": losses[-1],
              "seconds": time.perf_counter() - start}  # fmt: skip
    common.write_hf_model(
        out,
        model,
        arch,
        {"bos_token_id": None, "eos_token_id": tokenizer.eos_id, "torch_dtype": "float32"},
        files=[tokenizer_dir / n for n in ("vocab.json", "merges.txt", "tokenizer.json")],
        extra_json={"pretrain.json": record},
    )
    return out


# ------------------------------------------------------------------------------ statistics


def paired_bootstrap(a: list[list[list[float]]], b: list[list[list[float]]], samples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """Loss difference a - b on the same documents, with a paired bootstrap 95 % interval.

    Args:
        a, b: per run (seeds), per document ``[summed loss, tokens]``; the seeds of each side
            are averaged per document before resampling documents.

    Returns:
        tuple: (difference, low, high) in nats per token.
    """
    return paired_bootstrap_sets([(a, b)], samples, seed)


def paired_bootstrap_sets(pairs: list[tuple[list, list]], samples: int = 2000,
                          seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """The mean over held-out sets of each set's loss difference a - b, with its interval.

    Each set's documents are resampled on their own (the sets are separate samples), so the
    interval is that of the "general Δ (mean)" column: the plain mean of the per-set losses.

    Args:
        pairs: per held-out set, ``(a, b)`` as in :func:`paired_bootstrap`.

    Returns:
        tuple: (difference, low, high) in nats per token.
    """
    per_set = []
    for a, b in pairs:
        n = len(a[0])
        tokens = [a[0][i][1] for i in range(n)]
        diff = [
            statistics.fmean(r[i][0] for r in a) - statistics.fmean(r[i][0] for r in b)
            for i in range(n)
        ]
        per_set.append((diff, tokens))
    rng = random.Random(seed)
    stats = []
    for _ in range(samples):
        value = 0.0
        for diff, tokens in per_set:
            pick = [rng.randrange(len(diff)) for _ in range(len(diff))]
            value += sum(diff[i] for i in pick) / sum(tokens[i] for i in pick)
        stats.append(value / len(per_set))
    stats.sort()
    point = statistics.fmean(sum(d) / sum(t) for d, t in per_set)
    return point, stats[int(0.025 * samples)], stats[int(0.975 * samples) - 1]


def points(runs: dict[str, dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """(line, lr) -> its runs (one per seed)."""
    grouped: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs.values():
        grouped.setdefault((r["line"], r["lr"]), []).append(r)
    return grouped


def spread(group: list[dict[str, Any]], key: str) -> tuple[float, float, float]:
    """Mean, min and max of ``key`` over a point's seeds."""
    values = [r[key] for r in group]
    return statistics.fmean(values), min(values), max(values)


def intervals(runs: dict[str, dict[str, Any]], against: str = "full") -> list[dict[str, Any]]:
    """Each point with seeds against the reference point, per held-out set and general mean.

    Args:
        runs: the record's runs.
        against: the reference line: ``full`` (its point with seeds, the gain-matched rate) or
            ``adept`` (its point with seeds, the best rate).

    Returns:
        list: one row per (line, lr, set), ``set`` ``general`` being the mean of the general
        sets; the seeds paired are those both points have.
    """
    grouped = points(runs)
    candidates = [g for (line, _), g in grouped.items() if line == against and len(g) > 1]
    if not candidates:
        return []
    reference = max(candidates, key=len)
    seeds = {r["seed"] for r in reference}
    out = []
    for (line, lr), group in sorted(grouped.items()):
        if group is reference:
            continue
        paired = [r for r in group if r["seed"] in seeds and r.get("doc_losses")]
        ref = [r for r in reference if r["seed"] in {p["seed"] for p in paired}]
        if len(paired) < 2 or len(ref) != len(paired):
            continue
        per_set = {name: ([r["doc_losses"][name] for r in paired],
                          [r["doc_losses"][name] for r in ref])
                   for name in paired[0]["doc_losses"]}  # fmt: skip
        rows = {name: [pair] for name, pair in per_set.items()}
        rows["general"] = [pair for name, pair in per_set.items() if name != "domain"]
        for name, pairs in rows.items():
            diff, low, high = paired_bootstrap_sets(pairs)
            out.append({"line": line, "lr": lr, "set": name, "diff": diff, "low": low,
                        "high": high, "seeds": sorted(p["seed"] for p in paired),
                        "reference": f"{against} lr {reference[0]['lr']:g}"})  # fmt: skip
    return out


# ------------------------------------------------------------------------------ report


def write_report(record: dict[str, Any], stem: str, out_dir: Path) -> None:
    """The table, the intervals, the verdict and the frontier picture, from the record."""
    runs = record["runs"]
    base = record["base"]
    setting = record["setting"]
    lines = [f"command: {c}" for c in record["commands"]]
    lines += [common.provenance_line(p) for p in record.get("provenance", [])]
    lines += [
        "",
        f"Model {record['model']}, domain {record['domain']}; base held-out losses: "
        + ", ".join(f"{k} {v:.4f}" for k, v in base.items())
        + f". Budget per run: {setting['tokens']:,} tokens "
        f"({setting['steps']} steps of {setting['batch_size']} x {setting['seq_len']}).",
        "",
    ]
    sets = list(base)
    general = [s for s in sets if s != "domain"]
    lines += [
        "| line | lr | seeds | trained (share) | "
        + " | ".join(f"Δ {s}" for s in general)
        + " | general Δ (mean) | domain gain | s/step |",
        "|---|---|---|---|" + "---|" * len(general) + "---|---|---|",
    ]
    for (line, lr), group in sorted(points(runs).items()):
        first = group[0]
        cells = []
        for s in general:
            values = [r["deltas"][s] for r in group]
            cells.append(_mean_range(values))
        lines.append(
            f"| {line} | {lr:g} | {','.join(str(r['seed']) for r in group)} | "
            f"{first['trainable']:,} ({100 * first['trainable'] / first['total']:.1f}%) | "
            + " | ".join(cells)
            + f" | {_mean_range([r['general_increase'] for r in group])} | "
            f"{_mean_range([r['domain_gain'] for r in group])} | "
            f"{statistics.fmean(r['step_s_median'] for r in group):.2f} |"
        )
    for against in ("full", "adept"):
        found = intervals(runs, against)
        if not found:
            continue
        lines += ["", f"Paired bootstrap 95% intervals of the loss difference from {against} "
                  f"({found[0]['reference']}; same seeds, same held-out documents; `general`: "
                  f"the mean of the general sets; negative: lower loss than {against}):", "",
                  "| line | lr | seeds | set | difference | 95% interval | verdict |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for i in found:
            verdict = "no difference" if i["low"] <= 0 <= i["high"] else (
                f"lower than {against}" if i["high"] < 0 else f"higher than {against}")  # fmt: skip
            lines.append(
                f"| {i['line']} | {i['lr']:g} | {','.join(map(str, i['seeds']))} | {i['set']} | "
                f"{i['diff']:+.4f} | [{i['low']:+.4f}, {i['high']:+.4f}] | {verdict} |"
            )
    lines += ["", *verdict_lines(runs), ""]
    hours = record.get("seconds", 0.0) / 3600
    lines.append(f"CPU/GPU time: {hours:.1f} h in all, stage 1 probe included.")
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot(runs, out_dir / f"{stem}.png", f"{record['model']}, {record['domain']}")


def _mean_range(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:+.4f}"
    return f"{statistics.fmean(values):+.4f} [{min(values):+.4f}, {max(values):+.4f}]"


def frontier_at(group: list[dict[str, Any]], gain: float, key: str) -> float | None:
    """A line's ``key`` at domain gain ``gain``, linear between its rates (None outside)."""
    pts = sorted((r["domain_gain"], r[key]) for r in group)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= gain <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (gain - x0) / (x1 - x0)
    return None


def verdict_lines(runs: dict[str, dict[str, Any]]) -> list[str]:
    """At equal domain gain, whose general loss rises least; and ADEPT's best domain gain
    against full CPT's best.

    Each seed-0 run of another line is set against full CPT's seed-0 frontier (``pareto``),
    interpolated at its gain where the frontier spans it, and against the full-CPT run with
    the lowest general increase among those that gain at least as much: if that one's increase
    is lower too, full CPT dominates the run (a claim that needs no interpolation).
    """
    everything = lines_of(runs, "full")
    full = pareto(everything)
    adept = lines_of(runs, "adept")
    out = ["At equal domain gain (full CPT's seed-0 frontier, its rates that no other rate "
           "beats on both axes, interpolated; and the best full-CPT run that gains at least "
           "as much):", ""]  # fmt: skip
    for r in sorted(runs.values(), key=lambda r: (r["line"], r["lr"], r["seed"])):
        if r["line"] == "full" or r["seed"]:
            continue
        mine = r["general_increase"]
        ref = frontier_at(full, r["domain_gain"], "general_increase")
        where = "outside the frontier's gains" if ref is None else (
            f"frontier {ref:+.4f} ({mine - ref:+.4f})")  # fmt: skip
        above = [f for f in everything if f["domain_gain"] >= r["domain_gain"]]
        if above:
            best = min(above, key=lambda f: f["general_increase"])
            verdict = "dominated by" if best["general_increase"] <= mine else "not dominated:"
            where += (
                f"; {verdict} full lr {best['lr']:g} (gain {best['domain_gain']:+.4f}, "
                f"general {best['general_increase']:+.4f})"
            )
        else:
            where += "; gains more than every full-CPT run"
        out.append(f"- {r['name']} (gain {r['domain_gain']:+.4f}, general {mine:+.4f}): {where}")
    if full and adept:
        best_full = max(r["domain_gain"] for r in full)
        best_adept = max(r["domain_gain"] for r in adept)
        gap = 100 * (best_full - best_adept) / best_full
        out.append(
            f"- best domain gain: ADEPT {best_adept:+.4f} vs full {best_full:+.4f}: "
            f"{abs(gap):.1f}% {'below' if gap > 0 else 'above'} (within 3%: "
            f"{'yes' if gap <= 3 else 'no'})"
        )
    return out


_COLORS = {"full": "tab:red", "adept": "tab:green", "llama_pro": "tab:orange",
           "no_stage2": "tab:blue", "random": "tab:purple", "no_stage1": "tab:brown",
           "lora": "tab:cyan", "spectrum": "tab:olive", "adept+rank": "tab:pink",
           "adept+replay": "darkgreen", "full+replay": "darkred",
           "adept+interference": "black"}  # fmt: skip


def plot(runs: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Domain gain (x) against general increase (y) per line; bars: the seeds' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    by_line: dict[str, list[tuple[float, list[dict[str, Any]]]]] = {}
    for (line, lr), group in points(runs).items():
        by_line.setdefault(line, []).append((lr, group))
    for index, (line, entries) in enumerate(sorted(by_line.items())):
        entries.sort()
        color = _COLORS.get(line, f"C{index % 10}")
        xs, ys, xerr, yerr = [], [], [[], []], [[], []]
        for _, group in entries:
            gx, gy = spread(group, "domain_gain"), spread(group, "general_increase")
            xs.append(gx[0])
            ys.append(gy[0])
            xerr[0].append(gx[0] - gx[1])
            xerr[1].append(gx[2] - gx[0])
            yerr[0].append(gy[0] - gy[1])
            yerr[1].append(gy[2] - gy[0])
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", color=color, label=line,
                    capsize=3, linestyle="-" if len(xs) > 1 else "none")  # fmt: skip
        for (lr, _), x, y in zip(entries, xs, ys, strict=True):
            ax.annotate(f"{lr:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set(xlabel="domain held-out loss decrease (nats)",
           ylabel="general held-out loss increase, mean of the sets (nats)",
           title=f"{title}: equal budget (down-right is better)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------ legacy


def convert_legacy(old: dict[str, Any], model: str, domain: str) -> dict[str, Any]:
    """A result file of the former scripts (``forgetting_smollm2.py``: runs by name with
    ``general_increase_wiki``/``_speech`` and ``domain_gain``; ``forgetting.py``: a run list
    with ``general_increase``/``domain_decrease``) in this format. They hold no per-document
    losses, so their points have no intervals."""
    runs = {}
    items = old["runs"].values() if isinstance(old["runs"], dict) else old["runs"]
    for r in items:
        if "domain_gain" in r:
            deltas = {"general_wiki": r["general_increase_wiki"],
                      "general_speech": r["general_increase_speech"], "domain": -r["domain_gain"]}  # fmt: skip
            losses = r["losses"]
        else:
            deltas = {"general_literature": r["general_increase"], "domain": -r["domain_decrease"]}
            losses = {"general_literature": r["general_final"], "domain": r["domain_final"]}
        line = r.get("variant") or r["method"]
        general = [v for k, v in deltas.items() if k != "domain"]
        runs[r["name"]] = {
            "name": r["name"], "method": r["method"], "lr": r["lr"], "seed": 0,
            "line": line.replace(" (", "+").rstrip(")").replace(" ", "_"), "overrides": [],
            "losses": losses, "deltas": deltas, "domain_gain": -deltas["domain"],
            "general_increase": sum(general) / len(general), "trainable": r["trainable"],
            "total": r["total"], "layers": r.get("layers"), "copy_positions": r.get("copy_positions"),
            "step_s_median": r.get("step_s_median", float("nan")), "wall_s": r["wall_s"],
            "unit_scales": r.get("unit_scales", {}),
        }  # fmt: skip
    if "base" in old:
        base = dict(old["base"])
    else:
        first = items[0] if isinstance(items, list) else next(iter(items))
        base = {"general_literature": first["general_base"], "domain": first["domain_base"]}
    setting = dict(old["setting"])
    if "tokens" not in setting:
        setting["tokens"] = setting["steps"] * setting["batch_size"] * setting["seq_len"]
    return {
        "format": FORMAT, "model": model, "domain": domain, "setting": setting, "base": base,
        "runs": runs, "commands": old.get("commands") or [old["command"]],
        "provenance": old["provenance"] if isinstance(old.get("provenance"), list)
        else [old["provenance"]] if old.get("provenance") else [],
        "seconds": old.get("seconds", old.get("total_seconds", 0.0)),
        "converted_from": "the former forgetting scripts' format (no per-document losses)",
    }  # fmt: skip


# ------------------------------------------------------------------------------ pilot


def pilot(args: argparse.Namespace, out_dir: Path) -> None:
    """Full CPT at ``--pilot-lr`` for twice the budget, two seeds, the canary every
    ``steps / 2``: the general increase and domain gain by token count, and their seed spread."""
    preset = args.preset
    path = out_dir / f"{args.stem}_pilot.json"
    record = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    record.setdefault("provenance", []).append(common.provenance([__file__, *args.argv]))
    steps = 2 * preset.steps
    for seed in (0, 1):
        name = f"full_lr{args.pilot_lr:g}_s{seed}"
        if name in record["runs"]:
            continue
        output_dir = CACHE_DIR / f"pilot_{args.stem}" / name
        shutil.rmtree(output_dir, ignore_errors=True)
        run = RunSpec(name, "full", args.pilot_lr, seed)
        argv = ["--config", preset.config, *base_overrides(args, preset, output_dir, run)]
        argv += ["method=full", f"optimizer.lr={args.pilot_lr}", f"max_steps={steps}",
                 f"canary.every_n_steps={max(1, preset.steps // 2)}",
                 f"canary.general.num_samples={preset.samples['general']}",
                 f"canary.domain.num_samples={preset.samples['domain']}",
                 f"canary.domain.source={resolve(args, args.domain_spec.heldout)}"]  # fmt: skip
        wall, _ = common.run_recipe(argv)
        curve = json.loads((output_dir / "canary.json").read_text())
        record["runs"][name] = {"seed": seed, "lr": args.pilot_lr, "wall_s": wall, "curve": [
            {"step": p["step"], "tokens": p["step"] * preset.batch_size * preset.seq_len,
             "general_increase": p["general_loss"] - p["general_base"],
             "domain_gain": p["domain_base"] - p["domain_loss"]} for p in curve]}  # fmt: skip
        shutil.rmtree(output_dir, ignore_errors=True)
        path.write_text(json.dumps(record, indent=1))
    lines = [f"Pilot: full CPT at lr {args.pilot_lr:g}, seeds 0 and 1, canary (general: "
             "Wikipedia leads) every half budget.", "",
             "| tokens | general Δ (seed 0, 1) | spread | domain gain (seed 0, 1) | spread |",
             "|---|---|---|---|---|"]  # fmt: skip
    curves = [r["curve"] for r in record["runs"].values()]
    for points_ in zip(*curves, strict=False):
        g = [p["general_increase"] for p in points_]
        d = [p["domain_gain"] for p in points_]
        lines.append(
            f"| {points_[0]['tokens']:,} | {', '.join(f'{v:+.4f}' for v in g)} | "
            f"{max(g) - min(g):.4f} | {', '.join(f'{v:+.4f}' for v in d)} | {max(d) - min(d):.4f} |"
        )
    (out_dir / f"{args.stem}_pilot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3", choices=sorted(PRESETS))
    parser.add_argument("--domain", default=None, help="medical | maths (tiny: maths)")
    parser.add_argument("--model-dir", type=Path, help="default: the preset's")
    parser.add_argument("--data-dir", type=Path, default=Path("~/data/adept_real_text"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smoke run with a toy budget")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: preset's)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--only", default="", help="comma-separated run names (default all)")
    parser.add_argument("--max-runs", type=int, default=0, help="stop after N new runs")
    parser.add_argument("--override", action="append", default=[], help="recipe key=value")
    parser.add_argument("--pilot", action="store_true", help="the budget pilot only")
    parser.add_argument("--pilot-lr", type=float, default=1e-4)
    parser.add_argument("--report-only", action="store_true", help="rewrite .md/.png from JSON")
    parser.add_argument("--convert", type=Path, help="a former result file to convert")
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="LINE=LR[,LR]",
        help="replace a line's sweep (e.g. adept=3e-3): a record of chosen points only",
    )
    parser.add_argument(
        "--near", help="comma-separated lines at ADEPT's best rate (default: the preset's)"
    )
    parser.add_argument(
        "--seeds", help="comma-separated training seeds of the decisive points (default: 0,1,2)"
    )
    args = parser.parse_args(argv)
    args.argv = argv
    preset = PRESETS[args.model]
    args.domain = args.domain or next(iter(preset.domains))
    if args.domain not in preset.domains:
        parser.error(
            f"--domain {args.domain}: the {args.model} preset runs {sorted(preset.domains)}"
        )
    if args.quick:
        preset = dataclasses.replace(preset, **QUICK)
    if args.steps:
        preset = dataclasses.replace(preset, steps=args.steps)
    if args.sweep:
        sweeps = dict(preset.sweeps[args.domain])
        for item in args.sweep:
            line, _, rates = item.partition("=")
            if line not in ("full", "adept", "lora") or not (rates or line == "lora"):
                parser.error(
                    f"--sweep {item}: use full=LR, adept=LR or lora=LR (comma-separated; "
                    "lora= runs no LoRA)"
                )
            sweeps[line] = tuple(float(r) for r in rates.split(",") if r)
        preset = dataclasses.replace(preset, sweeps={**preset.sweeps, args.domain: sweeps})
    if args.near is not None:
        near = tuple(n for n in args.near.split(",") if n)
        unknown = sorted(set(near) - set(NEAR_BEST_ALL))
        if unknown:
            parser.error(
                f"--near {args.near}: unknown lines {unknown}; choose from {NEAR_BEST_ALL}"
            )
        preset = dataclasses.replace(preset, near_best=near)
    if args.seeds is not None:
        try:
            seeds = tuple(int(x) for x in args.seeds.split(","))
        except ValueError:
            parser.error(f"--seeds {args.seeds}: comma-separated integers, e.g. 0,1,2")
        if seeds[0] != 0 or len(set(seeds)) != len(seeds):
            parser.error(f"--seeds {args.seeds}: distinct seeds starting with 0 (the sweeps' seed)")
        preset = dataclasses.replace(preset, seeds=seeds)
    args.preset = preset
    args.domain_spec = preset.domains[args.domain]
    args.data_dir = args.data_dir.expanduser()
    args.stem = f"forgetting_{args.model}_{args.domain}{args.tag}"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out_dir = common.results_dir(args.quick)
    json_path = out_dir / f"{args.stem}.json"
    if args.convert:
        record = convert_legacy(json.loads(args.convert.read_text()), args.model, args.domain)
        json_path.write_text(json.dumps(record, indent=1))
        write_report(record, args.stem, out_dir)
        print(f"converted {args.convert} -> {json_path}")
        return 0
    record = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if args.report_only:
        if not record.get("runs"):
            raise SystemExit(f"--report-only: no runs in {json_path}")
        write_report(record, args.stem, out_dir)
        print((out_dir / f"{args.stem}.md").read_text())
        return 0
    if args.model == "tiny":
        args.model_dir = ensure_tiny_base(args.quick)
    else:
        args.model_dir = (args.model_dir or Path(args.preset.model_dir)).expanduser()
    if args.pilot:
        pilot(args, out_dir)
        return 0
    preset = args.preset
    provenance = common.provenance([__file__, *argv])
    record.setdefault("format", FORMAT)
    record.update(model=args.model, domain=args.domain)
    setting = {k: v for k, v in dataclasses.asdict(preset).items() if k != "domains"}
    old = record.get("setting") or {}
    changed = [
        k for k in BUDGET_KEYS if record.get("runs") and old.get(k, setting[k]) != setting[k]
    ]
    if changed:
        raise SystemExit(
            f"{json_path} was measured with other {', '.join(changed)}: use --tag for a new record"
        )
    record["setting"] = {**setting, "tokens": preset.tokens}
    record.setdefault("commands", [])
    if provenance["command"] not in record["commands"]:
        record["commands"].append(provenance["command"])
    record.setdefault("provenance", []).append(provenance)
    record.setdefault("runs", {})
    start = time.perf_counter() - record.get("seconds", 0.0)
    profile = ensure_profile(args)
    record["profile"] = json.loads(profile.read_text())["layer_scores"]["mask-out"]
    evaluator = Evaluator(args, preset)
    if "base_docs" not in record:
        record["base_docs"] = evaluator.doc_losses(evaluator.load(args.model_dir))
        record["base"] = {k: mean_loss(v) for k, v in record["base_docs"].items()}
    only = {n for n in args.only.split(",") if n}

    def save() -> None:
        record["seconds"] = time.perf_counter() - start
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(json_path)
        write_report(record, args.stem, out_dir)

    done = 0
    while not args.max_runs or done < args.max_runs:
        pending = [
            r
            for r in plan(preset, args.domain, record["runs"], args)
            if r.name not in record["runs"] and (not only or r.name in only)
        ]
        if not pending:
            break
        record["runs"][pending[0].name] = execute(
            args, pending[0], profile, evaluator, record["base"]
        )
        done += 1
        save()
    save()
    print((out_dir / f"{args.stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
