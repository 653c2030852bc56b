"""``adept-cpt plan``: the op-by-op activation model against autograd, the predicted peak against
real recipe runs, FLOPs against the benchmarks' FLOP model, parameter counts of every shipped
config against the published sizes, and the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_GEMMA3, TINY_LLAMA, TINY_QWEN3

from adept_components import cli
from adept_components.config import (
    RunPlan,
    available_configs,
    config_recipe,
    resolved_config,
)
from adept_components.losses import ChunkedHeadCrossEntropy, shift_labels
from adept_components.models.architecture import ModelArchitecture
from adept_components.planning import GIB, Precision, base_builder, micro_batch
from adept_components.precision import keep_trainable_in_fp32
from adept_components.trainable import (
    LORA_TARGETS,
    Adapters,
    Everything,
    Layers,
    Matrices,
    TrainableSet,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import common  # noqa: E402
import plan_vs_measured  # noqa: E402

FAMILIES = {"qwen3": TINY_QWEN3, "llama": TINY_LLAMA, "gemma3": TINY_GEMMA3}
PRECISIONS = {  # name -> (dtype, trainable_dtype: fp32)
    "fp32": (torch.float32, False),
    "bf16": (torch.bfloat16, False),
    "bf16+fp32_trainable": (torch.bfloat16, True),
}


def _trainable_sets() -> dict[str, TrainableSet]:
    """One of each kind: ADEPT-like copies, two layers, every weight, adapters, matrices."""
    return {
        "one_layer": Layers((2,)),
        "two_layers": Layers((1, 3)),
        "everything": Everything(),
        "adapters": Adapters(tuple(LORA_TARGETS), rank=4, alpha=8.0),
        "matrices": Matrices(("layers.2.mlp.w2.weight", "layers.3.attn.q_proj.weight")),
    }


def _models(arch: dict, trainable: TrainableSet, dtype: torch.dtype, fp32_trainable: bool):
    """The same decoder on the meta device (for the planner) and for real (for autograd), as
    the recipe materializes it: weights in ``dtype``, RoPE caches rebuilt in fp32."""
    architecture = ModelArchitecture.from_hf_config(dict(arch))
    with torch.device("meta"):
        meta = architecture.build(64)
    torch.manual_seed(0)
    real = architecture.build(64)
    for p in real.parameters():
        p.data = p.data.to(dtype)
    trainable.apply(meta)
    trainable.apply(real)
    fp32 = frozenset()
    if fp32_trainable:
        keep_trainable_in_fp32(trainable.fp32_modules(real), dtype)
        fp32 = frozenset(id(m) for m in trainable.fp32_modules(meta))
    precision = Precision(2 if dtype == torch.bfloat16 else 4, fp32)
    return meta, real, precision, architecture.vocab_size


def _autograd_saved_bytes(model: torch.nn.Module, tokens: torch.Tensor, chunks: int) -> int:
    """Bytes of the distinct storages autograd saves in the forward and loss (parameters and
    buffers left out), plus the step's tokens and targets, which the recipe holds."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    targets = shift_labels(tokens)
    for t in (tokens, targets):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        ChunkedHeadCrossEntropy(chunks)(model(tokens), targets)
    return sum(saved.values())


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_saved_activations_equal_autograds(family: str, precision: str) -> None:
    """What the planner says autograd keeps is what autograd keeps, to the byte: every kind
    of trainable set (frozen layers below and above, the first trained layer's input without
    grad, autocast weight copies, adapters), the deferred head and chunked logits, and
    Gemma 3's sliding window shorter than the sequence (its s x s mask)."""
    dtype, fp32_trainable = PRECISIONS[precision]
    batch, seq_len, chunks = 2, 24, 4
    for name, trainable in _trainable_sets().items():
        meta, real, plan_precision, vocab = _models(
            FAMILIES[family], trainable, dtype, fp32_trainable
        )
        tokens = torch.randint(
            0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)
        )
        for defer in (True, False):
            predicted = micro_batch(
                meta, batch, seq_len, plan_precision, defer_head=defer, num_output_chunks=chunks
            )
            real.set_num_output_chunks(chunks)
            real.defer_head = defer
            measured = _autograd_saved_bytes(real, tokens, chunks)
            assert predicted.saved_bytes == measured, (name, defer)


def test_frozen_layers_below_the_first_trained_one_keep_nothing() -> None:
    """ADEPT's point: layers below the first copy build no graph. Moving the one trained layer
    up removes whole layers' activations, exactly one frozen-with-graph layer's worth each."""
    saved = {}
    for layer in (1, 2, 3):
        meta, _, precision, _ = _models(TINY_QWEN3, Layers((layer,)), torch.float32, False)
        result = micro_batch(meta, 2, 16, precision, num_output_chunks=2)
        assert result.graph_layers == tuple(range(layer, 4))
        saved[layer] = result.saved_bytes
    # A Qwen3 layer that does not train but passes gradients keeps, per token (fp32):
    # input + rsqrt (49), q_proj out + rsqrt + rope q (64+4+64), k_proj out + rsqrt (32+2),
    # expanded k and v (64+64), attention out + lse (64+4), residual + rsqrt (49), gate, act,
    # up (3 x 96) = 748 floats; 32 tokens: 95,744 bytes.
    assert saved[1] - saved[2] == saved[2] - saved[3] == 748 * 4 * 32


def test_flops_equal_the_benchmarks_flop_model() -> None:
    """The planner's FLOPs equal ``benchmarks/common.flops_per_token``, written independently:
    ``2·(L·P + H) + 2·H + 2·(L−p)·P + 2·k·P + L·A + 2·(L−p)·A`` with k trained layers from p,
    ``6·(L·P + H) + 3·L·A`` for full training, and ``(L−p)·(2·P + A)`` recomputed with
    activation checkpointing (the deferred head's recomputation is counted apart here)."""
    batch, seq_len = 2, 32
    for trainable, trained in ((Layers((1, 3)), [1, 3]), (Everything(), None)):
        meta, _, precision, _ = _models(TINY_LLAMA, trainable, torch.float32, False)
        numbers = common.layer_numbers(meta)
        reference = common.flops_per_token(
            numbers, 4, seq_len, trained=trained, activation_checkpointing=True
        )
        result = micro_batch(
            meta, batch, seq_len, precision, num_output_chunks=0, defer_head=False,
            activation_checkpointing=True,
        )  # fmt: skip
        tokens = batch * seq_len
        assert result.flops == pytest.approx(reference.model * tokens, rel=1e-12)
        assert result.recompute_flops == pytest.approx(reference.recompute * tokens, rel=1e-12)


@pytest.mark.slow
def test_plan_matches_a_real_tiny_demo_run(tmp_path: Path) -> None:
    """The recipe itself (tiny demo, ADEPT with copies of layers 2 and 5, fp32, CPU), its
    second step measured with the profiler's allocation events: within 15% of the plan
    (benchmarks/results/plan_vs_measured.json: 1.000)."""
    config, overrides = plan_vs_measured.CASES["tiny_adept"]
    overrides = [*overrides, *plan_vs_measured.QUIET, f"output_dir={tmp_path / 'run'}"]
    predicted = plan_vs_measured.predict(config, overrides)
    (step,) = plan_vs_measured.measure_run(["--config", config, *overrides], steps=2)
    assert step["resident"] == predicted["resident"]  # weights, buffers, AdamW state: exact
    assert abs(predicted["peak"] / step["peak"] - 1) <= plan_vs_measured.TOLERANCE


def test_committed_plan_vs_measured_results() -> None:
    """benchmarks/plan_vs_measured.py's committed results: ADEPT and full, fp32, on the tiny
    demo and on SmolLM2-135M, each predicted peak within 15% of the measured one."""
    results = json.loads((REPO / "benchmarks/results/plan_vs_measured.json").read_text())
    cases = {case["case"]: case for case in results["cases"]}
    assert {"tiny_adept", "tiny_full", "smollm2_adept", "smollm2_full"} <= set(cases)
    for case in cases.values():
        ratio = case["predicted"]["peak"] / case["measured"]["peak"]
        assert ratio == pytest.approx(case["ratio"])
        assert abs(ratio - 1) <= results["tolerance"] == 0.15, case["case"]
    # SmolLM2-135M + 4 copies of a 3,540,096-parameter layer; full trains all 134,515,008.
    assert cases["smollm2_adept"]["predicted"]["trainable_params"] == 4 * 3_540_096
    assert cases["smollm2_full"]["predicted"]["trainable_params"] == 134_515_008


# --------------------------------------------------------------- parameters of every config

# Published sizes (unique parameters: a tied head counted once), each worked out from its
# config.json numbers: V vocab, d width, L layers, q/kv heads x head_dim, f MLP width.
#   per layer = q d·(h·hd) + k,v 2·d·(kv·hd) + o (h·hd)·d + 3·d·f + norms
# Qwen3-8B   V 151,936 d 4096 L 36 32/8x128 f 12288, untied: 36 x 192,946,432
#            + 2 x 622,329,856 (embedding, head) + 4096 = 8,190,735,360
# Qwen3-4B   d 2560 L 36 32/8x128 f 9728, tied: 36 x 100,930,816 + 388,956,160 + 2560
#            = 4,022,468,096 (model card: 4.0B, 3.6B non-embedding)
# Qwen3-1.7B d 2048 L 28 16/8x128 f 6144, tied: 28 x 50,336,000 + 311,164,928 + 2048
#            = 1,720,574,976 (model card: 1.7B, 1.4B non-embedding; 2,031,739,904 counts
#            the tied embedding twice)
# Llama-3.1-8B V 128,256 d 4096 L 32 32/8x128 f 14336, untied: 32 x 218,112,000
#            + 2 x 525,336,576 + 4096 = 8,030,261,248
# Gemma 3 1B V 262,144 d 1152 L 26 4/1x256 f 6912, tied, 4 norms + q/k norms per layer:
#            26 x 26,842,112 + 301,989,888 + 1152 = 999,885,952
# Gemma 3 270M d 640 L 18 4/1x256 f 2048, tied: 18 x 5,573,632 + 167,772,160 + 640
#            = 268,098,176
# SmolLM2-135M V 49,152 d 576 L 30 9/3x64 f 1536, tied: 30 x 3,540,096 + 28,311,552 + 576
#            = 134,515,008
# tiny demo  V 2048 d 128 L 8 4/2x32 f 384, tied: 8 x 196,928 + 262,144 + 128 = 1,837,696
PUBLISHED = {
    "qwen3_8b": 8_190_735_360,
    "qwen3_4b": 4_022_468_096,
    "qwen3_1_7b": 1_720_574_976,
    "llama3_1_8b": 8_030_261_248,
    "gemma3_1b": 999_885_952,
    "gemma3_270m": 268_098_176,
    "smollm2_135m": 134_515_008,
    "tiny_demo": 1_837_696,
}
# The config.json of the models the configs build from a prepared directory
# (benchmarks/prepare_smollm2.py, prepare_gemma3.py write them).
PREPARED_CONFIGS = {
    "smollm2_135m": {
        "model_type": "llama", "vocab_size": 49152, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576,
        "intermediate_size": 1536, "head_dim": 64, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
    },
    "gemma3_270m": {
        "model_type": "gemma3_text", "vocab_size": 262144, "num_hidden_layers": 18,
        "num_attention_heads": 4, "num_key_value_heads": 1, "hidden_size": 640,
        "intermediate_size": 2048, "head_dim": 256, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256, "sliding_window": 512,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "tie_word_embeddings": True,
    },
}  # fmt: skip
CPT_CONFIGS = [name for name in available_configs() if config_recipe(name) == "adept_cpt"]


def _model_of(config: str) -> str:
    return next(model for model in PUBLISHED if config.startswith(model))


def test_every_training_config_has_a_published_count() -> None:
    """A new config must add its model's published size to PUBLISHED (see CONTRIBUTING)."""
    assert CPT_CONFIGS and all(any(c.startswith(m) for m in PUBLISHED) for c in CPT_CONFIGS)


@pytest.mark.parametrize("config", CPT_CONFIGS)
def test_meta_built_parameters_equal_the_published_size(config: str, tmp_path: Path) -> None:
    """The planner's model of every shipped training config (its builder, or the prepared
    checkpoint's config.json) has exactly the published number of parameters."""
    model = _model_of(config)
    overrides = ["device=cpu"]
    if model in PREPARED_CONFIGS:
        (tmp_path / "config.json").write_text(json.dumps(PREPARED_CONFIGS[model]))
        overrides.append(f"checkpointer.checkpoint_dir={tmp_path}")
    plan = RunPlan.from_config(resolved_config(["--config", config, *overrides], "adept_cpt"))
    build, _ = base_builder(plan)
    with torch.device("meta"):
        base = build()
    assert sum(p.numel() for p in base.parameters()) == PUBLISHED[model]


# ------------------------------------------------------------------------- the command line


def test_plan_of_the_tiny_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "tiny_demo"]) == 0
    out = capsys.readouterr().out
    assert "8 -> 10 layers" in out and "393,856 of 2,231,552 parameters, 22 param groups" in out
    assert "positions are placeholders: the probe picks them" in out
    assert "Fits 80 GiB per GPU" in out
    for method in ("adept<", "full", "llama_pro", "no_stage1", "no_stage2", "random", "spectrum", "lora"):  # fmt: skip
        assert f"\n{method} " in out


def test_plan_numbers_of_the_tiny_demo() -> None:
    """Weights, gradients and AdamW state of ADEPT on the tiny demo, to the byte (fp32)."""
    planner, source = cli.load_planner("tiny_demo", [])
    assert source.endswith("config.json (qwen3)")
    memory = planner.estimate("adept", planner.batching, 1).memory
    rope = 2 * 256 * 16 * 2 * 4 + 16 * 4  # one shared cache [256, 16, 2] + theta, fp32
    assert memory.weights == 2_231_552 * 4 + rope
    assert memory.grads == 393_856 * 4
    assert memory.optimizer == 393_856 * 4 * 2 + 22 * 4  # exp_avg, exp_avg_sq; 22 steps
    assert memory.gathered == 0


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["plan", "tiny_demo", "--gpus", "0"], "--gpus 0: must be at least 1"),
        (["plan", "tiny_demo", "--gpu-memory", "-1"], "--gpu-memory -1: must be a positive"),
        (["plan", "tiny_demo", "batch_sise=2"], "no key 'batch_sise'. Did you mean batch_size"),
        (["plan", "no_such_config"], "'no_such_config' is neither a file nor a shipped config"),
        (["plan", "tiny_demo", "expansion.num_layers=8"], "expansion.num_layers=8"),
        (["plan", "tiny_demo", "method=lora", "lora.rank=1000"], "lora.rank=1000"),
    ],
)
def test_plan_refuses_bad_input_in_one_line(
    argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("adept-cpt plan: error: ") and field in err
    assert err.count("\n") == 1


def test_a_saved_profile_gives_the_real_positions(tmp_path: Path) -> None:
    """``expansion.profile``: the profile's k least important layers are copied (no stand-in),
    checked against the model as the recipe checks it."""
    from adept_components.config import asset_path
    from adept_components.data.probe import ProbeSetInfo
    from adept_components.importance import LayerProfile, model_identity

    planner, _ = cli.load_planner("tiny_demo", [])
    with torch.device("meta"):
        base = base_builder(planner.plan)[0]()
    scores = [0.9, 0.2, 0.8, 0.7, 0.6, 0.1, 0.5, 0.4]  # layers 5 and 1 matter least
    profile = LayerProfile(
        method="mask-out",
        layer_scores={"mask-out": scores},
        selected_layers=[1, 5],
        model=model_identity(base, asset_path("demo/base_model")),
        data=ProbeSetInfo("general.txt", "text", "train", 64, 128, 8000, 0),
    )
    (tmp_path / "layer_importance.json").write_text(json.dumps(profile.to_dict()))
    planner, _ = cli.load_planner("tiny_demo", [f"expansion.profile={tmp_path}"])
    adept = planner.sized["adept"]
    assert adept.positions == (2, 7) and adept.placeholder is None  # copies of 1 and 5
    assert planner.sized["no_stage1"].positions == (1, 5)


def test_qwen3_8b_on_8_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    """The acceptance command: no weights here, so the builder; FSDP2 over 8 GPUs."""
    assert cli.main(["plan", "qwen3_8b_medical", "--gpus", "8", "--tflops", "400"]) == 0
    out = capsys.readouterr().out
    assert "adept_components.models.qwen3_8b (checkpointer.checkpoint_dir=" in out
    assert "771,785,728 of 8,962,521,088 parameters, 44 param groups, 36 -> 40 layers" in out
    assert "4 sequences x 4096 tokens x 8 accumulation x 8 GPUs = 1,048,576 per step" in out
    assert "Fits 80 GiB per GPU" in out and "s per step" in out


def test_a_run_that_does_not_fit_gets_the_smallest_fix() -> None:
    """Llama-3.1-8B ADEPT on one 80 GiB GPU without checkpointing does not fit; turning it on
    does. At 40 GiB it is not enough: the batch shrinks, tokens per step unchanged."""
    planner, _ = cli.load_planner("llama3_1_8b_medical", ["enable_activation_checkpointing=false"])
    batching = planner.batching
    assert planner.estimate("adept", batching, 1).memory.peak > 80 * GIB
    fix = planner.fix(batching, 1, 80 * GIB)
    assert fix.overrides == ("enable_activation_checkpointing=true",) and fix.gpus == 1
    assert fix.estimate.memory.peak <= 80 * GIB
    fix = planner.fix(batching, 1, 48 * GIB)
    assert fix.overrides[0] == "enable_activation_checkpointing=true"
    assert fix.overrides[1:] == ("batch_size=2", "gradient_accumulation_steps=16")
    assert fix.tokens_per_step == batching.tokens(1) == 131_072
    fix = planner.fix(batching, 1, 24 * GIB)  # the weights alone are 21.5 GiB: more GPUs
    assert fix.gpus > 1 and fix.estimate.memory.peak <= 24 * GIB
