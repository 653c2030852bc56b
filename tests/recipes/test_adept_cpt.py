"""The adept_cpt recipe end to end on the shipped tiny demo (real text, a pretrained tiny Qwen3).

In-process runs call the recipe's ``main`` exactly as ``tune run`` does (same argv); the
launcher itself and torchrun are exercised in subprocesses by ``test_entry.py`` and below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import adept_cpt
import pytest
import torch
import transformers
from conftest import tune_run
from safetensors.torch import load_file

from adept_components.checkpointing import export_hf, read_trainable_tensors
from adept_components.config import asset_path
from adept_components.expansion import ExpansionMetadata
from adept_components.importance import select_layers

BASE = Path(asset_path("demo/base_model"))
FAST = [
    "max_steps=6",
    "canary.every_n_steps=3",
    "save_every_n_steps=0",
    "unit_tuning.refresh_every=2",
]


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo's layer profile, probed once: tests not about the probe reuse it."""
    out = tmp_path_factory.mktemp("probed")
    run(out, "stage1_only=true")
    return out / "profile" / "layer_importance.json"


def run(out: Path, *overrides: str) -> None:
    """Run the recipe in this process on the tiny demo config."""
    assert adept_cpt.main(["--config", "tiny_demo", f"output_dir={out}", *overrides]) == 0


def losses(out: Path, metric: str = "loss") -> dict[int, float]:
    """Step -> ``metric`` (loss, lr, ...) from the run's DiskLogger files."""
    found: dict[int, float] = {}
    for log in sorted((out / "logs").glob("log_*.txt")):
        for line in log.read_text().splitlines():
            step = re.match(r"Step (\d+) \|", line)
            value = re.search(rf"(?:\| | ){metric}:(\S+)", line)
            if step and value:
                found[int(step.group(1))] = float(value.group(1))
    return found


def hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_originals_unchanged(
    final: dict[str, torch.Tensor], meta: ExpansionMetadata, dtype: torch.dtype | None = None
) -> None:
    """Every base-model tensor sits bitwise unchanged at its new position in ``final``."""
    for key, tensor in hf_tensors(BASE).items():
        match = re.match(r"model\.layers\.(\d+)\.(.+)", key)
        moved = (
            f"model.layers.{meta.original_positions[int(match[1])]}.{match[2]}" if match else key
        )
        assert torch.equal(final[moved], tensor.to(dtype or tensor.dtype)), key


def test_tiny_demo_end_to_end(tmp_path: Path) -> None:
    """The README's first command: selected layers and share printed, domain loss falls,
    transformers loads the output, every non-copy weight is bitwise the base model's."""
    out = tmp_path / "demo"
    result = tune_run(["adept_cpt", "--config", "tiny_demo", f"output_dir={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr
    assert re.search(r"Selected layers \[\d+, \d+\] \(k=2\)", printed)
    assert re.search(r"trainable: [\d,]+ / [\d,]+ \(\d+\.\d\d%\)", printed)
    assert f"HF checkpoint: {out / 'final'}" in printed

    canary = json.loads((out / "canary.json").read_text())
    assert canary[-1]["domain_loss"] < canary[-1]["domain_base"] - 0.5
    assert all(
        (out / "profile" / f).is_file()
        for f in ("layer_importance.json", "layer_importance_layers.png")
    )
    assert (out / "unit_scales.png").is_file()
    retention = json.loads((out / "retention.json").read_text())
    assert retention["domain"]["loss_delta"] < -0.5  # the domain improved
    assert all((out / f).is_file() for f in ("retention.md", "retention.png", "canary.png"))

    meta = ExpansionMetadata.from_json(
        json.loads((out / "final" / "adept_expansion.json").read_text())
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "final")
    assert len(model.model.layers) == meta.num_layers == 10

    final = hf_tensors(out / "final")
    assert_originals_unchanged(final, meta)
    for position in meta.copy_positions:
        assert not torch.equal(
            final[f"model.layers.{position}.mlp.down_proj.weight"],
            torch.zeros_like(final[f"model.layers.{position}.mlp.down_proj.weight"]),
        )


# Per-step training loss (steps 1-6) and canary losses (steps 3 and 6) of the tiny demo with
# FAST, fp32 on CPU, one process. Produced by running each method with the config and
# overrides below and reading the DiskLogger file; any change of numerics (data order, label
# shift, loss reduction, unit scales, schedule, initialisation of the copies) moves them.
PINNED = {
    "adept": {
        "loss": [7.437842, 8.199991, 7.788975, 8.115124, 6.969067, 7.153718],
        "general": [4.594581, 4.724391],
        "domain": [7.553320, 7.156526],
    },
    "full": {
        "loss": [7.437842, 8.199991, 7.392843, 7.465093, 6.542895, 6.436726],
        "general": [4.677221, 5.354803],
        "domain": [7.111031, 6.327302],
    },
    "llama_pro": {
        "loss": [7.437842, 8.199991, 7.767647, 8.103479, 6.956788, 7.244838],
        "general": [4.595302, 4.704783],
        "domain": [7.541648, 7.059383],
    },
    "no_stage1": {
        "loss": [7.437842, 8.199991, 7.752943, 7.986930, 6.910853, 7.019331],
        "general": [4.598157, 4.758017],
        "domain": [7.461139, 6.922946],
    },
    "no_stage2": {
        "loss": [7.437842, 8.199991, 7.788975, 8.171576, 7.051660, 7.487115],
        "general": [4.594549, 4.605803],
        "domain": [7.597113, 7.250358],
    },
    "random": {
        "loss": [7.437842, 8.199991, 7.765411, 7.978878, 6.775921, 7.332827],
        "general": [4.599258, 5.162172],
        "domain": [7.441659, 7.347346],
    },
    "lora": {
        "loss": [7.437842, 8.199991, 7.750855, 8.074218, 6.961220, 7.259288],
        "general": [4.594995, 4.684015],
        "domain": [7.522883, 7.066159],
    },
}
# What each method does, stated independently of the method table: expands (copies inserted),
# what trains ("copies", "selected" original layers, "adapters" or "all"), per-unit learning-rate
# scales.
BEHAVIOUR = {
    "adept": (True, "copies", True),
    "full": (False, "all", False),
    "llama_pro": (True, "copies", False),
    "no_stage1": (False, "selected", True),
    "no_stage2": (True, "copies", False),
    "random": (True, "copies", True),
    "lora": (False, "adapters", False),
}


def changed_layers(base: dict[str, torch.Tensor], final: dict[str, torch.Tensor]) -> set[int]:
    """Indices of ``final``'s decoder layers whose weights differ from ``base``'s at that index."""
    return {
        int(re.match(r"model\.layers\.(\d+)", k)[1])
        for k in final
        if k.startswith("model.layers.") and (k not in base or not torch.equal(base[k], final[k]))
    }


def assert_method_behaviour(out: Path, expands: bool, trains: str, decoupled: bool) -> None:
    """The run in ``out`` expanded, trained and scaled as stated."""
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["num_hidden_layers"] == (10 if expands else 8)
    assert (out / "final" / "adept_expansion.json").is_file() == expands
    base, final = hf_tensors(BASE), hf_tensors(out / "final")
    embedding_same = torch.equal(
        base["model.embed_tokens.weight"], final["model.embed_tokens.weight"]
    )
    assert embedding_same == (trains != "all")
    if expands:
        meta = ExpansionMetadata.from_json(
            json.loads((out / "final" / "adept_expansion.json").read_text())
        )
        assert_originals_unchanged(final, meta)
        moved = {f"model.layers.{meta.original_positions[int(m[1])]}.{m[2]}": v
                 for k, v in base.items() if (m := re.match(r"model\.layers\.(\d+)\.(.+)", k))}  # fmt: skip
        assert changed_layers(moved, final) == set(meta.copy_positions)
    elif trains == "adapters":  # merged into the adapted matrices of every layer, nothing else
        targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        moved = {k for k in base if not torch.equal(base[k], final[k])}
        assert {k.split(".")[-2] for k in moved} == set(targets)
        assert changed_layers(base, final) == set(range(8))
    elif trains == "selected":  # the k least important ORIGINAL layers train, nothing else
        profile = json.loads((out / "profile" / "layer_importance.json").read_text())
        assert changed_layers(base, final) == set(profile["selected_layers"])
    scales = [line for log in (out / "logs").glob("log_*.txt")
              for line in log.read_text().splitlines() if "scale/" in line]  # fmt: skip
    assert bool(scales) == decoupled
    if decoupled:  # refreshed at steps 2 and 4, each unit between 0 and 2, not all equal
        values = [float(v) for v in re.findall(r"scale/\S+:(\S+)", scales[-1])]
        assert len(scales) == 2 and min(values) == 0.0 and max(values) == 2.0


@pytest.mark.parametrize("method", sorted(PINNED))
def test_every_method_runs(tmp_path: Path, method: str, profile: Path) -> None:
    out = tmp_path / method
    run(out, f"method={method}", *FAST, f"expansion.profile={profile}")
    pinned = PINNED[method]
    assert list(losses(out).values()) == pytest.approx(pinned["loss"], abs=1e-5)
    assert list(losses(out, "canary/general_loss").values()) == pytest.approx(
        pinned["general"], abs=1e-5
    )
    assert list(losses(out, "canary/domain_loss").values()) == pytest.approx(
        pinned["domain"], abs=1e-5
    )
    assert len(losses(out, "lr")) == 6
    assert all(rate > 0 for rate in losses(out, "tokens_per_second_per_gpu").values())
    assert_method_behaviour(out, *BEHAVIOUR[method])
    if method == "llama_pro":
        meta = json.loads((out / "final" / "adept_expansion.json").read_text())
        assert meta["source_layers"] == [3, 7]


def test_a_method_added_to_the_table_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The method table is the only place a method is defined: one new row is a new method."""
    from adept_components.methods import METHODS, Method

    row = Method("uniform_decoupled", "uniform", expand=True, decoupled=True)
    monkeypatch.setitem(METHODS, row.name, row)
    out = tmp_path / row.name
    run(out, f"method={row.name}", *FAST)
    meta = json.loads((out / "final" / "adept_expansion.json").read_text())
    assert meta["source_layers"] == [3, 7]  # llama_pro's layers ...
    assert_method_behaviour(out, expands=True, trains="copies", decoupled=True)
    steps = list(losses(out).values())  # ... and its losses until the first scales act (step 3)
    assert steps[:3] == pytest.approx(PINNED["llama_pro"]["loss"][:3], abs=1e-5)
    assert steps[3] != pytest.approx(PINNED["llama_pro"]["loss"][3], abs=1e-5)


def test_resume_gives_the_uninterrupted_run(tmp_path: Path, profile: Path) -> None:
    """12 steps straight == 6 steps, stop, resume, 6 steps: same losses and weights."""
    common = [
        f"expansion.profile={profile}",
        "max_steps=12",
        "save_every_n_steps=0",
        "unit_tuning.refresh_every=4",
        "canary.every_n_steps=5",
    ]
    run(tmp_path / "straight", *common)
    run(tmp_path / "resumed", *common, "stop_after_steps=6")
    assert not (tmp_path / "resumed" / "final").exists()
    assert (tmp_path / "resumed" / "checkpoints" / "step_6" / "training_state.pt").is_file()
    run(tmp_path / "resumed", *common, "resume_from_checkpoint=true")

    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(straight) == sorted(resumed) == list(range(1, 13))
    for step in straight:
        assert abs(straight[step] - resumed[step]) <= 1e-6, step
    # Base LR of the schedule and the per-unit scales logged at each refresh are identical too.
    for metric in ("lr", "scale/layers.4.attn.q_proj.weight", "scale/layers.6.mlp.w2.weight"):
        assert losses(tmp_path / "straight", metric) == losses(tmp_path / "resumed", metric), metric
    assert (
        len(losses(tmp_path / "resumed", "scale/layers.4.attn.q_proj.weight")) == 2
    )  # steps 4 and 8, one before the stop and one after
    a, b = hf_tensors(tmp_path / "straight" / "final"), hf_tensors(tmp_path / "resumed" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_run_with_fp32_copies_resumes_exactly(tmp_path: Path) -> None:
    """dtype=bf16, trainable_dtype=fp32: the copies train in fp32, the HF checkpoint is bf16
    with every non-copy weight the bf16 base's, and 6 steps straight == 3, resume, 3: the
    resume checkpoint holds the copies in fp32 (a bf16 checkpoint alone would round them)."""
    common = [
        "dtype=bf16",
        "trainable_dtype=fp32",
        "expansion.layers=[3,5]",  # no stage-1 probe: this test is about precision and resume
        "max_steps=6",
        "save_every_n_steps=0",
        "unit_tuning.refresh_every=2",
        "canary.every_n_steps=3",
    ]
    run(tmp_path / "straight", *common)
    run(tmp_path / "resumed", *common, "stop_after_steps=3")
    step_3 = tmp_path / "resumed" / "checkpoints" / "step_3"
    fp32 = read_trainable_tensors(step_3)
    meta = ExpansionMetadata.from_json(json.loads((step_3 / "adept_expansion.json").read_text()))
    assert {int(k.split(".")[1]) for k in fp32} == set(meta.copy_positions)
    assert all(v.dtype == torch.float32 for v in fp32.values())
    assert any(  # the fp32 weights hold more than their bf16 rounding
        not torch.equal(v, v.to(torch.bfloat16).float()) for v in fp32.values()
    )
    exported = export_hf(step_3, tmp_path / "step_3_hf")  # a full HF model of that step
    saved = hf_tensors(exported)
    copy = meta.copy_positions[0]  # holds the fp32 weights, rounded
    assert torch.equal(
        saved[f"model.layers.{copy}.self_attn.q_proj.weight"],
        fp32[f"layers.{copy}.attn.q_proj.weight"].to(torch.bfloat16),
    )
    assert_originals_unchanged(saved, meta, torch.bfloat16)
    run(tmp_path / "resumed", *common, "resume_from_checkpoint=true")

    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(straight) == sorted(resumed) == list(range(1, 7))
    assert all(abs(straight[s] - resumed[s]) <= 1e-6 for s in straight), (straight, resumed)
    final = hf_tensors(tmp_path / "straight" / "final")
    assert final.keys() == hf_tensors(tmp_path / "resumed" / "final").keys()
    assert all(
        torch.equal(final[k], v) for k, v in hf_tensors(tmp_path / "resumed" / "final").items()
    )
    assert {v.dtype for v in final.values()} == {torch.bfloat16}
    config = json.loads((tmp_path / "straight" / "final" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert_originals_unchanged(final, meta, torch.bfloat16)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    """FSDP2 on two ranks with batch 4 each == one process accumulating two batches of 4
    (which tokenizes the corpus itself, while the ranks share a token cache), with rows as
    units: each rank rescales the update of its own rows (``Shard(0)``) by their scales."""
    common = [
        "max_steps=6",
        "batch_size=4",
        "save_every_n_steps=0",
        "unit_tuning.refresh_every=3",
        "unit_tuning.units=rows",
        "canary.every_n_steps=3",
        "expansion.layers=[3,5]",  # copies at 4 and 7; the probe's ranks are tested elsewhere
    ]
    run(tmp_path / "one", *common, "gradient_accumulation_steps=2")
    # The ranks share one tokenized corpus: LOCAL_RANK 0 writes it, rank 1 waits and maps it.
    cache = f"dataset.cache_dir={tmp_path / 'cache'}"
    two = ["--nproc_per_node", "2", "adept_cpt", "--config", "tiny_demo"]
    result = tune_run([*two, f"output_dir={tmp_path / 'two'}", cache, *common], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert len(list((tmp_path / "cache").glob("tokens-*.json"))) == 1
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert abs(one[step] - two[step]) <= 1e-4 * abs(one[step]), (step, one[step], two[step])
    # The rows' scales are in use (their means, logged, are not all 1) and reach the same
    # weights: a rank scaling another rank's rows would be off by lr * (s_i - s_j).
    logged = [losses(tmp_path / "two", f"scale/layers.{p}.attn.q_proj.weight") for p in (4, 7)]
    means = [scales[max(scales)] for scales in logged]
    assert all(0.0 < m < 1.99 for m in means), means
    one_final, two_final = (
        hf_tensors(tmp_path / "one" / "final"),
        hf_tensors(tmp_path / "two" / "final"),
    )
    assert one_final.keys() == two_final.keys()
    for key, tensor in one_final.items():
        assert torch.allclose(tensor, two_final[key], rtol=0, atol=2e-5), key
    assert (
        transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path / "two" / "final"
        ).config.num_hidden_layers
        == 10
    )


def test_stage1_only_saves_a_function_preserving_expansion(tmp_path: Path) -> None:
    out = tmp_path / "stage1"
    run(out, "stage1_only=true")
    assert not losses(out)
    tokens = torch.randint(0, 2048, (1, 40), generator=torch.Generator().manual_seed(0))
    base = transformers.AutoModelForCausalLM.from_pretrained(BASE).eval()
    expanded = transformers.AutoModelForCausalLM.from_pretrained(out / "final").eval()
    assert expanded.config.num_hidden_layers == 10
    with torch.no_grad():
        assert torch.allclose(base(tokens).logits, expanded(tokens).logits, atol=1e-5, rtol=0)
    profile = json.loads((out / "profile" / "layer_importance.json").read_text())
    meta = json.loads((out / "final" / "adept_expansion.json").read_text())
    assert meta["source_layers"] == profile["selected_layers"]


def test_interference_selection_is_deterministic_and_the_same_on_two_ranks(
    tmp_path: Path,
) -> None:
    """``expansion.importance=interference``: the profile holds the new score beside
    mask-out's and the domain batches it used; the k lowest are copied; two gloo ranks (each
    scoring its share of the batches, sums all-reduced) give one process's scores and the same
    layers (the scores are bit-identical for a seed: ``test_interference.py``)."""
    common = ["stage1_only=true", "expansion.importance=interference", "seed=3"]
    run(tmp_path / "a", *common)
    first = json.loads((tmp_path / "a" / "profile" / "layer_importance.json").read_text())
    assert sorted(first.pop("seconds")) == ["interference", "mask-out", "unit scores"]
    scores = first["layer_scores"]
    assert sorted(scores) == ["grad-cumulative", "interference", "mask-out", "rank"]
    assert first["method"] == "interference"
    assert first["selected_layers"] == select_layers(scores["interference"], 2)
    assert first["domain"]["order_seed"] == 4 and first["domain"]["batches"] > 0
    assert (tmp_path / "a" / "profile" / "layer_importance_layers.png").stat().st_size > 0
    meta = json.loads((tmp_path / "a" / "final" / "adept_expansion.json").read_text())
    assert meta["source_layers"] == first["selected_layers"]

    two = ["--nproc_per_node", "2", "adept_cpt", "--config", "tiny_demo"]
    result = tune_run([*two, f"output_dir={tmp_path / 'two'}", *common], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = json.loads((tmp_path / "two" / "profile" / "layer_importance.json").read_text())
    assert ranks["selected_layers"] == first["selected_layers"]
    assert ranks["layer_scores"]["interference"] == pytest.approx(
        scores["interference"], rel=1e-4, abs=1e-7
    )


def test_probe_mixture_from_yaml(tmp_path: Path) -> None:
    """Spec S1.1's two kinds in one probe set, configured in YAML: the profile records both."""
    from omegaconf import OmegaConf

    from adept_components.config import load_config

    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"instruction": f"Describe chapter {i} in one sentence", "output": f"Chapter {i} is calm."}
        for i in range(10)
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(["--config", "tiny_demo"])
    cfg.probe = {
        "_component_": "adept_components.data.probe_mixture",
        "max_seq_len": 128,
        "parts": [
            {"source": asset_path("demo/general.txt"), "kind": "text", "num_samples": 24},
            {"source": str(pairs), "kind": "instruction", "num_samples": 8},
        ],
    }
    path = tmp_path / "mixture.yaml"
    OmegaConf.save(cfg, path)
    out = tmp_path / "out"
    assert adept_cpt.main(["--config", str(path), f"output_dir={out}", "stage1_only=true"]) == 0
    profile = json.loads((out / "profile" / "layer_importance.json").read_text())
    assert profile["data"]["kind"] == "text + instruction"
    assert profile["data"]["num_samples"] == 32
    assert len(profile["selected_layers"]) == 2


def test_saved_profile_skips_probing(tmp_path: Path) -> None:
    run(tmp_path / "first", "stage1_only=true")
    profile = tmp_path / "first" / "profile" / "layer_importance.json"
    run(tmp_path / "second", "stage1_only=true", f"expansion.profile={profile}")
    first = json.loads((tmp_path / "first" / "final" / "adept_expansion.json").read_text())
    second = json.loads((tmp_path / "second" / "final" / "adept_expansion.json").read_text())
    assert first == second


def test_nan_loss_stops_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from adept_components.losses import ChunkedHeadCrossEntropy

    calls = {"n": 0}
    real = ChunkedHeadCrossEntropy.__call__

    def poisoned(self, logits, labels):
        loss = real(self, logits, labels)
        if torch.is_grad_enabled():  # training steps only; the canary runs under no_grad
            calls["n"] += 1
            if calls["n"] > 5:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(ChunkedHeadCrossEntropy, "__call__", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as exit_info:
        adept_cpt.main(
            ["--config", "tiny_demo", f"output_dir={out}", "max_steps=10", "save_every_n_steps=4"]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "loss is nan at step 6" in err and "checkpoints/step_4" in err
    assert "Traceback" not in err
    assert (out / "checkpoints" / "step_4" / "resume.json").is_file()
    assert not (out / "final").exists()


_BAD = {
    "unknown_method": (["method=adept_pro"], "method='adept_pro'"),
    "batch_size_zero": (["batch_size=0"], "batch_size=0 must be a positive integer"),
    "batch_size_string": (["batch_size=four"], "batch_size='four' must be a positive integer"),
    "max_steps_negative": (["max_steps=-3"], "max_steps=-3"),
    "grad_accum_float": (["gradient_accumulation_steps=1.5"], "gradient_accumulation_steps=1.5"),
    "k_zero": (["expansion.num_layers=0"], "expansion.num_layers=0"),
    "k_too_large": (["expansion.num_layers=8"], "k=8"),
    "layer_out_of_range": (["expansion.layers=[3,40]"], "40"),
    "duplicate_layers": (["expansion.layers=[3,3]"], "3"),
    "unknown_importance": (["expansion.importance=magic"], "expansion.importance='magic'"),
    "interference_chunk": (
        ["expansion.importance=interference", "expansion.interference_chunk=0"],
        "expansion.interference_chunk=0 must be a positive integer",
    ),
    "missing_dataset_file": (["dataset.source=/nonexistent/corpus.jsonl"], "does not exist"),
    "seq_len_too_long": (["dataset.max_seq_len=1024"], "dataset.max_seq_len=1024 exceeds"),
    "dtype": (["dtype=fp8"], "dtype='fp8'"),
    "trainable_dtype": (["trainable_dtype=bf16"], "trainable_dtype='bf16' with dtype=fp32"),
    "missing_required": (["~optimizer"], "lacks required key(s) ['optimizer']"),
    "missing_optimizer_class": (["optimizer._component_=torch.optim.Adamm"], "Adamm"),
    "min_scale": (["unit_tuning.min_scale=3"], "min_scale"),
    "refresh_zero": (["unit_tuning.refresh_every=0"], "refresh_every"),
    "optimizer_in_bwd": (["+optimizer_in_bwd=true"], "optimizer_in_bwd"),
    "resume_without_checkpoint": (["resume_from_checkpoint=true"], "holds no step_N checkpoint"),
    "unknown_override": (["batch_sise=2"], "no key 'batch_sise'"),
    "cuda_without_gpu": (["device=cuda"], "no CUDA GPU"),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_bad_config_is_one_clear_error(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides, message = _BAD[case]
    if case == "cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        adept_cpt.main(["--config", "tiny_demo", f"output_dir={out}", *overrides])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("adept_cpt: error: ") and message in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_output_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "taken"
    target.write_text("not a directory")
    with pytest.raises(SystemExit):
        adept_cpt.main(["--config", "tiny_demo", f"output_dir={target}"])
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "not a directory"


@pytest.mark.parametrize("contents", ["full", "trainable"])
def test_resume_with_a_checkpoint_of_another_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], contents: str
) -> None:
    out = tmp_path / "run"
    form = f"intermediate_checkpoints={contents}"
    run(out, *FAST[:1], "stop_after_steps=2", form, "expansion.layers=[3,7]")
    name, key, value = (
        ("config.json", "intermediate_size", 512)
        if contents == "full"
        else ("resume.json", "num_layers", 11)  # a depth the expansion does not give
    )
    record_path = out / "checkpoints" / "step_2" / name
    record = json.loads(record_path.read_text())
    record[key] = value
    record_path.write_text(json.dumps(record))
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(SystemExit):
        adept_cpt.main(
            ["--config", "tiny_demo", f"output_dir={out}", *FAST[:1], form,
             "expansion.layers=[3,7]", "resume_from_checkpoint=true"]
        )  # fmt: skip
    assert "is of another model" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before


def test_a_null_seed_runs_with_a_logged_random_seed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "null_seed"
    with caplog.at_level("INFO", logger=adept_cpt.log.name):
        run(out, "seed=null", "method=llama_pro", "max_steps=2", "canary.every_n_steps=0")
    found = re.search(r"seed=null: random seed (\d+) \(set seed=(\d+) to repeat\)", caplog.text)
    assert found and found[1] == found[2], caplog.text
    assert len(losses(out)) == 2
