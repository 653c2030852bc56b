"""What the benchmark scripts share, written once.

- *Provenance*: the exact command, commit, library versions and machine of a result, so that a
  number in ``benchmarks/results/`` says where it came from.
- *The recipe's own records*: its DiskLogger metric log (step times, losses, unit scales,
  canary timings) and its log messages (trainable parameters, copied layers).
- *The FLOP model* of one training step, for full training and for training only some layers.
- *Writing a torchtune decoder as a Hugging Face directory* that both recipes can load.

The scripts import it as ``common``: ``python benchmarks/NAME.py`` puts this folder first on
``sys.path``. Imports of the recipe and of ``adept_components`` stay inside the functions, so a
process that only needs a parser (torchtune's recipe importing ``cpu_vs_full_finetune``) loads
nothing more.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import re
import shlex
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
CACHE_DIR = BENCH_DIR / ".cache"  # gitignored: base models, run directories, smoke runs
TOOLS_DIR = REPO / "tools"


def results_dir(quick: bool = False) -> Path:
    """Where a benchmark writes its result files.

    A ``--quick`` smoke run checks the machinery, it measures nothing; its files go to an
    ignored folder so that they are never committed beside real results.

    Args:
        quick (bool): the run is a smoke run.

    Returns:
        Path: ``benchmarks/results``, or ``benchmarks/.cache/quick_results`` for a smoke run
        (created).
    """
    path = CACHE_DIR / "quick_results" if quick else RESULTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def use_tools() -> None:
    """Make the repository's ``tools/`` scripts importable (``import build_demo``).

    ``tools/`` is not part of the installed package; the benchmarks that build their base model
    the way the demo model is built import from it.
    """
    if str(TOOLS_DIR) not in sys.path:
        sys.path.insert(0, str(TOOLS_DIR))


# ------------------------------------------------------------------------------ provenance


def command_line(argv: list[str]) -> str:
    """The command that ran a script, as typed from the repository root.

    Args:
        argv (list[str]): ``sys.argv`` of the script: its path first, then its arguments.

    Returns:
        str: e.g. ``python benchmarks/forgetting.py --quick`` (arguments shell-quoted).
    """
    script = Path(argv[0]).resolve()
    name = script.relative_to(REPO) if script.is_relative_to(REPO) else Path(script.name)
    return shlex.join(["python", name.as_posix(), *argv[1:]])


def _git(*args: str) -> str | None:
    """Output of ``git ARGS`` in this repository; None without git or outside a checkout."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """The checked-out commit and whether tracked sources differ from it.

    Result files are left out of the comparison: a benchmark that rewrites its own JSON after
    every run would otherwise call its second invocation dirty. A copy of the tree that is not
    a git checkout (or sits inside another repository's) gives ``(None, None)``.

    Returns:
        tuple: (commit hash or None, dirty or None).
    """
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != REPO:
        return None, None
    commit = _git("rev-parse", "HEAD")
    status = _git(
        "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"
    )
    return commit, None if status is None else bool(status)


def cpu_model() -> str:
    """The CPU's name: ``model name`` of ``/proc/cpuinfo``, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance(argv: list[str]) -> dict[str, Any]:
    """Where a result comes from: command, code, libraries, machine and date.

    Every results JSON records this under ``"provenance"``; a number without it cannot be
    traced to the code and the machine that produced it. Call it after the script has set
    its thread count, so ``torch_threads`` is what the measurement ran with.

    Args:
        argv (list[str]): ``sys.argv`` of the script (its path first).

    Returns:
        dict: ``command``, ``commit`` and ``dirty`` (None outside a git checkout), ``torch``,
        ``python``, ``cpu``, ``cpu_count``, ``torch_threads``, ``gpu`` (None without CUDA) and
        ``date`` (UTC, ISO 8601).
    """
    commit, dirty = git_state()
    return {
        "command": command_line(argv),
        "commit": commit,
        "dirty": dirty,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def provenance_line(record: dict[str, Any], label: str = "provenance") -> str:
    """One line of a report saying where its numbers come from (the command is printed apart).

    Args:
        record (dict): what ``provenance`` returned.
        label (str): the line's first word(s).

    Returns:
        str: e.g. ``provenance: commit 1736b44a12, torch 2.13.0+cpu, Python 3.11.7, CPU …
        (2 cores, 2 torch threads), no GPU, 2025-01-01T00:00:00+00:00``.
    """
    commit = record.get("commit")
    code = f"commit {commit[:10]}" if commit else "commit unknown"
    if record.get("dirty"):
        code += " with uncommitted changes"
    gpu = f"GPU {record['gpu']}" if record.get("gpu") else "no GPU"
    return (
        f"{label}: {code}, torch {record['torch']}, Python {record['python']}, CPU "
        f"{record['cpu']} ({record['cpu_count']} cores, {record['torch_threads']} torch "
        f"threads), {gpu}, {record['date']}"
    )


def start_timing(argv: list[str], threads: int, seed: int) -> dict[str, Any]:
    """Set torch's threads and seed, then print the command and its provenance.

    The opening of every timing script: the provenance is taken after the thread count is
    set, so it records what the measurement ran with.

    Args:
        argv (list[str]): ``sys.argv`` of the script (its path first).
        threads (int): torch intra-op threads.
        seed (int): ``torch.manual_seed``.

    Returns:
        dict: the ``provenance``.
    """
    torch.set_num_threads(threads)
    record = provenance(argv)
    print(f"$ {record['command']}\n{provenance_line(record)}")
    torch.manual_seed(seed)
    return record


def random_qwen3(vocab_size: int, num_layers: int, dim: int, seq_len: int) -> nn.Module:
    """A random-weight Qwen3 of the timing benchmarks' shape: 4 heads (2 KV), MLP ``3·dim``."""
    from adept_components.models import qwen3

    return qwen3(
        vocab_size=vocab_size,
        num_layers=num_layers,
        num_heads=4,
        num_kv_heads=2,
        embed_dim=dim,
        intermediate_dim=3 * dim,
        max_seq_len=seq_len,
        head_dim=dim // 4,
    )


# ------------------------------------------------------------------------- the metric log

# One ``name:value`` field of a DiskLogger line. Names hold slashes and dots (``scale/layers.4
# .attn.q_proj.weight``); a value may be printed as ``tensor(2.31)`` by torchtune's recipes.
_FIELD = re.compile(r"(?<!\S)([\w./-]+):(?:tensor\()?([-+]?(?:[0-9.]+(?:[eE][-+]?\d+)?|nan|inf))")
_LINE = re.compile(r"Step (\d+) \| (.*)")


def read_metric_log(log_dir: Path) -> list[tuple[int, dict[str, float]]]:
    """Every line of a run's DiskLogger file: its step and its numeric fields, in file order.

    torchtune's ``DiskLogger`` writes ``Step N | name:value name:value ...``; adept_cpt logs
    ``loss``, ``lr`` and ``tokens_per_second`` every step, ``scale/<unit>`` after each unit
    re-scoring and ``canary/...`` after each canary; torchtune's own recipes log
    ``tokens_per_second_per_gpu``.

    Args:
        log_dir (Path): the run's ``metric_logger.log_dir`` (``OUTPUT_DIR/logs``).

    Returns:
        list[tuple[int, dict[str, float]]]: ``(step, {name: value})`` per line.

    Raises:
        RuntimeError: not exactly one ``log_*.txt`` file in ``log_dir`` (a fresh run writes
            one; more means runs were mixed in one directory).
    """
    files = sorted(log_dir.glob("log_*.txt"))
    if len(files) != 1:
        raise RuntimeError(
            f"expected one DiskLogger file log_*.txt in {log_dir}, found {len(files)}: "
            "run each benchmark run in a fresh output directory"
        )
    rows = []
    for line in files[0].read_text().splitlines():
        match = _LINE.match(line)
        if match:
            fields = {name: float(value) for name, value in _FIELD.findall(match[2])}
            rows.append((int(match[1]), fields))
    return rows


def step_times(
    rows: list[tuple[int, dict[str, float]]], tokens_per_step: int
) -> tuple[list[float], list[float]]:
    """Wall seconds and loss of each logged optimizer step, in step order.

    The recipes log a token rate, not a time: seconds = tokens per step / rate, with the count
    the rate was measured in (adept_cpt: supervised targets ``b·(s−1)``; torchtune: labels
    before the shift, ``b·s``). Logging every step makes each value one step's wall time.

    Args:
        rows (list): what ``read_metric_log`` returned.
        tokens_per_step (int): the token count of one step, as the recipe counts it.

    Returns:
        tuple[list[float], list[float]]: (seconds, losses), one per step that logged a rate.
    """
    seconds, losses = {}, {}
    for step, fields in rows:
        rate = fields.get("tokens_per_second", fields.get("tokens_per_second_per_gpu"))
        if rate is not None:
            seconds[step] = tokens_per_step / rate
            losses[step] = fields.get("loss", float("nan"))
    steps = sorted(seconds)
    return [seconds[s] for s in steps], [losses[s] for s in steps]


def metric_values(rows: list[tuple[int, dict[str, float]]], name: str) -> list[float]:
    """Every logged value of one field (``canary/seconds`` …), in file order."""
    return [fields[name] for _, fields in rows if name in fields]


def latest_values(rows: list[tuple[int, dict[str, float]]], prefix: str) -> dict[str, float]:
    """The last logged value of every field named ``PREFIX...``, keyed without the prefix.

    E.g. ``prefix="scale/"``: the unit learning-rate scales of the last re-scoring.
    """
    out: dict[str, float] = {}
    for _, fields in rows:
        out.update({k[len(prefix) :]: v for k, v in fields.items() if k.startswith(prefix)})
    return out


# ------------------------------------------------------------------- the recipe in-process


class _Messages(logging.Handler):
    """Keeps the recipe's log messages (the trainable-parameter line, the selected layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_recipe(argv: list[str]) -> tuple[float, list[str]]:
    """``adept_cpt.main(argv)`` in this process, as ``tune run adept_cpt ARGV`` would run it.

    Args:
        argv (list[str]): ``--config NAME key=value ...``.

    Returns:
        tuple[float, list[str]]: wall seconds and the recipe's log messages.

    Raises:
        RuntimeError: the recipe exited with a non-zero status.
    """
    import adept_cpt

    print(f"\n=== adept_cpt.main({shlex.join(argv)})", flush=True)
    handler = _Messages()
    adept_cpt.log.addHandler(handler)
    start = time.perf_counter()
    try:
        status = adept_cpt.main(argv)
    finally:
        adept_cpt.log.removeHandler(handler)
    if status != 0:
        raise RuntimeError(f"the recipe exited with status {status}")
    return time.perf_counter() - start, handler.messages


def trainable_counts(messages: list[str]) -> tuple[int, int]:
    """Trainable and total parameters, from the recipe's ``trainable: N / M`` line.

    Raises:
        RuntimeError: the recipe logged no such line.
    """
    for message in messages:
        found = re.search(r"trainable: ([\d,]+) / ([\d,]+)", message)
        if found:
            return int(found[1].replace(",", "")), int(found[2].replace(",", ""))
    raise RuntimeError("the recipe did not log its trainable-parameter count")


def copied_layers(messages: list[str]) -> str:
    """The base layers the recipe copied, e.g. ``"[3, 5, 14, 17]"``; ``"all"`` without copies."""
    for message in messages:
        found = re.search(r"copies of (\[[\d, ]*\])", message)
        if found:
            return found[1]
    return "all"


def trained_layers(messages: list[str]) -> list[int] | None:
    """The trained layer positions the recipe logged; None when every weight trains."""
    for message in messages:
        found = re.search(r"Trainable: layers (\[[\d, ]*\])", message)
        if found:
            return json.loads(found[1])
    return None


# ------------------------------------------------------------------------------ FLOP model


@dataclasses.dataclass(frozen=True)
class LayerNumbers:
    """The sizes the FLOP model needs (every decoder layer alike)."""

    matmul: int  # P: matmul weights of one layer (q, k, v, output projection, w1, w2, w3)
    head: int  # H = V·d: weights of the output head
    attention_width: int  # n_h·d_h: the width of attention scores and values


@dataclasses.dataclass(frozen=True)
class Flops:
    """Training FLOPs per token of one optimizer step."""

    model: float  # what MFU counts
    recompute: float  # the extra forward of activation checkpointing (HFU only)


def layer_numbers(model: nn.Module) -> LayerNumbers:
    """``LayerNumbers`` of a built torchtune decoder (its first layer and its embedding)."""
    layer = model.layers[0]
    return LayerNumbers(
        matmul=sum(m.weight.numel() for m in layer.modules() if isinstance(m, nn.Linear)),
        head=model.tok_embeddings.num_embeddings * model.tok_embeddings.embedding_dim,
        attention_width=layer.attn.num_heads * layer.attn.head_dim,
    )


def flops_per_token(
    numbers: LayerNumbers,
    num_layers: int,
    seq_len: int,
    trained: list[int] | None = None,
    activation_checkpointing: bool = False,
) -> Flops:
    """Matmul FLOPs per token of one training step, full or with only some layers training.

    Embedding lookup, norms, softmax, elementwise ops and the optimizer are left out. With
    ``P``, ``H`` as in ``LayerNumbers``, ``L`` the model's layers, ``k`` trained layers, ``p``
    the lowest of them, and ``A = 4·c·n_h·d_h`` one layer's attention scores and values in the
    forward (``c = (s+1)/2``, the mean causal context)::

        a matmul: forward 2·(weights); backward 2·(weights) for the input gradient
                  + 2·(weights) for the weight gradient if it trains
        attention: forward A; backward 2·A (gradients of both operands)
        full    = 6·(L·P + H) + 3·L·A            the familiar 6·N, N = L·P + H
        trained = 2·(L·P + H) + 2·H              forward everywhere; input gradient of the
                                                 frozen head
                  + 2·(L−p)·P + 2·k·P            input gradients from the top down to p;
                                                 weight gradients of the k trained layers
                  + L·A + 2·(L−p)·A              attention forward everywhere, backward above p

    Layers below ``p`` build no autograd graph. Activation checkpointing re-runs the forward
    of every layer with a graph (``2·P + A`` each), counted apart.

    Args:
        numbers (LayerNumbers): the model's sizes.
        num_layers (int): layers of the trained model (expanded: ``L + k``).
        seq_len (int): tokens per sequence.
        trained (list[int] | None): positions of the layers whose weights train (ADEPT's
            copies, ``no_stage1``'s original layers); None when every weight trains.
        activation_checkpointing (bool): every layer with a graph recomputes its forward.

    Returns:
        Flops: model FLOPs and recompute FLOPs per token.
    """
    P, H = numbers.matmul, numbers.head
    A = 4 * (seq_len + 1) / 2 * numbers.attention_width
    if trained is None:
        model = 6 * (num_layers * P + H) + 3 * num_layers * A
        graph_layers = num_layers
    else:
        k, above = len(trained), num_layers - min(trained)
        model = 2 * (num_layers * P + H) + 2 * H + 2 * above * P + 2 * k * P
        model += num_layers * A + 2 * above * A
        graph_layers = above
    recompute = graph_layers * (2 * P + A) if activation_checkpointing else 0.0
    return Flops(model=model, recompute=recompute)


# ----------------------------------------------------------------------- HF model directory


def write_hf_model(
    directory: Path,
    model: nn.Module,
    architecture: Any,
    config: dict[str, Any] | None = None,
    files: Iterable[Path] = (),
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Save a torchtune decoder as a Hugging Face model directory, atomically.

    What a benchmark's base model needs so that both our ``HFCheckpointer`` and torchtune's
    ``FullModelHFCheckpointer`` load it: ``config.json`` written from the architecture, one
    ``model.safetensors`` in HF names, and the tokenizer files beside them.

    Args:
        directory (Path): the directory to write (replaced if it exists).
        model (nn.Module): the decoder, built by ``architecture``.
        architecture (ModelArchitecture): its numbers (``adept_components.models``).
        config (dict | None): config fields the numbers do not cover (token ids,
            ``torch_dtype``).
        files (Iterable[Path]): files to copy in (tokenizer).
        extra_json (dict | None): further JSON files, ``{filename: content}``.

    Returns:
        Path: ``directory``.
    """
    from adept_components.atomic import atomic_directory
    from adept_components.checkpointing import write_safetensors_shards
    from adept_components.models.convert_weights import tune_to_hf

    hf_config = architecture.to_hf_config(config)
    state = tune_to_hf({k: v.detach() for k, v in model.state_dict().items()}, architecture)

    with atomic_directory(directory) as tmp:
        for path in files:
            shutil.copy2(path, tmp / path.name)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
        write_safetensors_shards(state, tmp, max_shard_size=2**40)
        for name, content in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(content, indent=1))
    return directory


# ----------------------------------------------------------------------- GGUF checkpoints


# GGUF metadata value types (the file format's numbering): fixed sizes, 8 string, 9 array.
GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
GGUF_STRING, GGUF_ARRAY = 8, 9


def gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict[str, str]:
    """The string values of ``keys`` from a GGUF file's header, read until all are found.

    ``gguf.GGUFReader`` parses every field (a 262k-entry vocabulary: tens of seconds); the
    architecture and name come first in the header, so this reads a few hundred bytes.

    Args:
        path (Path): the file.
        keys (tuple[str, ...]): metadata keys with string values.

    Returns:
        dict[str, str]: the keys found (a missing key is left out).

    Raises:
        ValueError: not a GGUF file, or a header that ends early or is malformed.
    """
    found: dict[str, str] = {}
    with path.open("rb") as f:

        def read(fmt: str) -> int:
            raw = f.read(struct.calcsize(fmt))
            if len(raw) != struct.calcsize(fmt):
                raise ValueError("the header ends early")
            return struct.unpack(fmt, raw)[0]

        def string() -> bytes:
            return f.read(read("<Q"))

        def skip(kind: int) -> None:
            if kind in GGUF_SIZES:
                f.seek(GGUF_SIZES[kind], 1)
            elif kind == GGUF_STRING:
                f.seek(read("<Q"), 1)
            elif kind == GGUF_ARRAY:
                item, count = read("<I"), read("<Q")
                if item in GGUF_SIZES:
                    f.seek(GGUF_SIZES[item] * count, 1)
                else:
                    for _ in range(count):
                        skip(item)
            else:
                raise ValueError(f"unknown value type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError("no GGUF magic")
        if read("<I") < 2:
            raise ValueError("GGUF version 1 is not supported")
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            key, kind = string().decode(errors="replace"), read("<I")
            if key in keys and kind == GGUF_STRING:
                found[key] = string().decode(errors="replace")
                if len(found) == len(keys):
                    break
            else:
                skip(kind)
    return found


def gguf_model(path: Path, architecture: str, program: str, install_hint: str) -> str:
    """Refuse a file that is not a readable GGUF of ``architecture``; its recorded name.

    Args:
        path (Path): the GGUF file (it exists).
        architecture (str): the ``general.architecture`` it must have (``llama``, ``gemma3``).
        program (str): the script's name, first in every message.
        install_hint (str): how to install the ``gguf`` package (transformers reads the
            weights with it).

    Returns:
        str: the model name the file records (``general.name``), or the file's stem.

    Raises:
        SystemExit: ``gguf`` missing, an unreadable file, or another architecture.
    """
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise SystemExit(f"{program}: the gguf package is missing: {install_hint}")
    try:
        fields = gguf_metadata(path, ("general.architecture", "general.name"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"{program}: {path} is not a readable GGUF file ({e})") from None
    found = fields.get("general.architecture")
    if found != architecture:
        raise SystemExit(f"{program}: {path} holds a {found!r} model; expected {architecture!r}")
    return fields.get("general.name") or path.stem


def gguf_to_hf_directory(gguf_file: Path, directory: Path) -> None:
    """Dequantize a GGUF checkpoint with transformers and save it as an HF model directory.

    transformers' GGUF reader dequantizes every tensor and undoes llama.cpp's own changes to
    them (the q/k row permutation of Llama, the ``+ 1`` on Gemma's norm weights). It refuses to
    ``save_pretrained`` a model loaded from GGUF (it counts as quantized), so the dequantized
    tensors go into a fresh model built from the same config, which is saved instead, with
    the tokenizer transformers builds from the GGUF's vocabulary.

    Args:
        gguf_file (Path): the GGUF file.
        directory (Path): an existing (empty) directory to write ``model.safetensors``,
            ``config.json``, ``generation_config.json``, ``tokenizer.json`` and
            ``tokenizer_config.json`` into.
    """
    import transformers

    source, name = str(gguf_file.parent), gguf_file.name
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        source, gguf_file=name, dtype=torch.float32
    )
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    # GGUF stores eps as float32: 1e-5 arrives as 9.99999974738e-06. Same float32, cleaner file.
    config["rms_norm_eps"] = float(f"{config['rms_norm_eps']:.7g}")
    model_type = config.pop("model_type")
    fresh = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(model_type, **config), dtype=torch.float32
    )
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(directory)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=name)
    tokenizer.save_pretrained(directory)


def greedy_completion(directory: Path, prompt: str, max_new_tokens: int = 4) -> str:
    """Reload an HF model directory as a user would and greedy-complete ``prompt``.

    Args:
        directory (Path): the model directory.
        prompt (str): the text to complete (the tokenizer adds its own BOS, if it has one).
        max_new_tokens (int): how many tokens to generate.

    Returns:
        str: the generated text, without the prompt.
    """
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :])
