"""The run plan: the tiny demo config read into typed stages, each field checked by its name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from adept_components.config import ConfigError, RunPlan, load_config
from adept_components.config.plan import UnitTuningPlan
from adept_components.methods import METHODS, Method


def plan(*overrides: str) -> RunPlan:
    cfg = load_config(["--config", "tiny_demo", *overrides])
    OmegaConf.resolve(cfg)
    return RunPlan.from_config(cfg)


def test_the_demo_plan() -> None:
    p = plan()
    assert p.method is METHODS["adept"]
    assert (p.seed, p.seed_is_random, p.fp32_trainable) == (0, False, False)
    assert p.stage1.selection == "probe" and p.stage1.k == 2 and p.stage1.importance == "mask-out"
    assert p.optimizer.cls is torch.optim.AdamW and p.optimizer.lr == 2e-3
    assert p.optimizer.kwargs == {"weight_decay": 0.0}
    assert p.unit_tuning.refresh_every == 20 and p.unit_tuning.policy.due(20)
    assert p.unit_tuning.scale_options == {
        "min_scale": 0.0,
        "separate_norm_range": False,
        "direction": "general",
        "per_kind": False,
    }
    assert p.canary is not None and p.canary.every_n_steps == 20
    assert p.seq_lens == {
        "dataset.max_seq_len": 128,
        "probe.max_seq_len": 128,
        "canary.general.max_seq_len": 128,
        "canary.domain.max_seq_len": 128,
    }


@pytest.mark.parametrize(
    ("overrides", "selection", "k", "probe"),
    [
        ((), "probe", 2, True),
        (("expansion.profile=/some/layer_importance.json",), "profile", 2, True),
        (("expansion.layers=[5,1,3]",), "layers", 3, True),
        (("method=llama_pro",), "uniform", 2, False),
        (("method=llama_pro", "expansion.layers=[1]"), "layers", 1, False),
        (("method=random",), "random", 2, True),  # decoupled: the probe scores units
        (("method=no_stage2",), "probe", 2, True),
        (("method=full",), None, 0, False),
        (("method=full", "expansion.num_layers=0"), None, 0, False),  # k unused
    ],
)
def test_stage1_selection(
    overrides: tuple[str, ...], selection: str | None, k: int, probe: bool
) -> None:
    stage1 = plan(*overrides).stage1
    assert (stage1.selection, stage1.k, stage1.probe is not None) == (selection, k, probe)


def test_a_null_seed_is_drawn_once() -> None:
    first, second = plan("seed=null"), plan("seed=None")  # None: torchtune users' spelling
    assert first.seed_is_random and second.seed_is_random and 0 <= first.seed < 2**31
    assert first.seed != second.seed  # 1 in 2**31 to fail


def test_torchtune_idioms() -> None:
    """``clip_grad_norm=inf`` (log the norm, clip nothing), ``+log_peak_memory_stats=True``
    and ``keep_last_n_checkpoints`` are read, not ignored or refused."""
    p = plan("clip_grad_norm=inf", "+log_peak_memory_stats=True", "+keep_last_n_checkpoints=2")
    assert (p.train.clip_grad_norm, p.train.log_peak_memory, p.train.keep_last_n) == (
        float("inf"),
        True,
        2,
    )
    assert plan().train.keep_last_n is None and not plan().train.log_peak_memory


def test_defaults_live_in_the_plan() -> None:
    p = plan("~unit_tuning", "~clip_grad_norm", "~log_every_n_steps", "~canary")
    assert p.unit_tuning == UnitTuningPlan()
    assert (p.train.clip_grad_norm, p.train.log_every, p.canary) == (None, 1, None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("seed=-1",), "seed=-1 must be an integer in [0, 2**32) or null (random)"),
        (("seed=1.5",), "seed=1.5 must be an integer"),
        (("method=adept_pro",), "method='adept_pro'; use one of adept, full, llama_pro"),
        (("+unit_tuning.refresh_evry=5",), "unit_tuning.refresh_evry is not a field of "
         "unit_tuning (fields: refresh_every, refresh_at_start, min_scale, separate_norm_range, "
         "direction, scoring, units). Did you mean unit_tuning.refresh_every?"),
        (("+expansion.num_layer=3",), "Did you mean expansion.num_layers?"),
        (("unit_tuning.min_scale=3",), "unit_tuning.min_scale=3 must be a number in [0, 2]"),
        (("unit_tuning.refresh_every=0",), "unit_tuning.refresh_every=0 must be a positive"),
        (("unit_tuning.direction=up",), "unit_tuning.direction='up'; use one of general, domain"),
        (("unit_tuning.scoring=best",), "unit_tuning.scoring='best'; use one of paper, per_kind, conflict"),
        (("unit_tuning.units=rows", "unit_tuning.scoring=conflict"), "unit_tuning.units=rows scores rows"),
        (("canary.gate_limit=0",), "canary.gate_limit=0 must be a positive number"),
        (("canary.gate_action=halt",), "canary.gate_action='halt' must be 'stop' or 'warn'"),
        (("method=spectrum", "expansion.spectrum_fraction=1.5"), "expansion.spectrum_fraction=1.5 must be a number in (0, 1]"),
        (("intermediate_checkpoints=some",), "intermediate_checkpoints='some' must be one of"),
        (("unit_tuning.refresh_at_start=3",), "unit_tuning.refresh_at_start=3 must be true or"),
        (("optimizer._component_=adept_components.optim.unit_optimizer",),
         "optimizer._component_: 'adept_components.optim.unit_optimizer' is <function"),
        (("optimizer._component_=torch.optim.Adamm",),
         "optimizer._component_: 'torch.optim.Adamm' cannot be imported"),
        (("optimizer.lr=0",), "optimizer.lr=0 must be a positive number"),
        (("+optimizer.momentum=0.9",), "optimizer: torch.optim.adamw.AdamW does not accept the "
         "arguments ['momentum', 'weight_decay']"),
        (("expansion.layers=3",), "expansion.layers=3 must be a list of layer indices"),
        (("expansion.importance=magic",), "expansion.importance='magic'; use one of mask-out"),
        (("clip_grad_norm=-1",), "clip_grad_norm=-1 must be a positive number, inf (log "
         "grad_norm without clipping) or null"),
        (("keep_last_n_checkpoints=0",), "keep_last_n_checkpoints=0 must be a positive integer"),
        (("+log_peak_memory_stats=maybe",), "log_peak_memory_stats='maybe' must be true or"),
        (("model._component_=adept_components.models.qwen3_8bb",),
         "model._component_: 'adept_components.models.qwen3_8bb' cannot be imported: "
         "adept_components.models has no 'qwen3_8bb'; did you mean "
         "adept_components.models.qwen3_8b or"),
        (("model._component_=adept_component.models.qwen3_8b",),
         "no module 'adept_component'; did you mean adept_components.models.qwen3_8b?"),
        (("tokenizer._component_=adept_components.models.tokenizers.qwen_tokenizer",),
         "did you mean adept_components.models.tokenizers.qwen3_tokenizer"),
        (("~model._component_",), "`model` must be a mapping with a `_component_` entry: add "
         "model._component_=..."),
        (("+checkpointer.checkpoint_files=[model.safetensors]",),
         "checkpointer.checkpoint_files: this project's checkpointer "
         "(adept_components.checkpointing.HFCheckpointer) does not take checkpoint_files: it "
         "reads every *.safetensors file of checkpoint_dir"),
        (("+dataset.max_tokenz=5",), "dataset.max_tokenz is not an argument of "
         "adept_components.data.packed_text_dataset (arguments: tokenizer, source"),
        (("canary.batch_size=0",), "canary.batch_size=0 must be a positive integer"),
        (("~canary.domain",), "canary.every_n_steps is set but canary.domain"),
        (("~probe",), "method=adept needs a `probe` section"),
        (("stage1_only=maybe",), "stage1_only='maybe' must be true or false"),
    ],
)  # fmt: skip
def test_each_bad_field_is_named(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        plan(*overrides)
    assert message in str(err.value)


def test_a_new_method_needs_only_its_row(monkeypatch: pytest.MonkeyPatch) -> None:
    row = Method("uniform_decoupled", "uniform", expand=True, decoupled=True)
    monkeypatch.setitem(METHODS, row.name, row)
    p = plan(f"method={row.name}")
    assert p.method is row and p.stage1.selection == "uniform" and p.stage1.probe is not None
    assert (row.trains, METHODS["no_stage1"].trains, METHODS["full"].trains) == (
        "copies",
        "selected",
        "all",
    )
    with pytest.raises(ValueError, match="selects no layers"):
        Method("broken", None, expand=True, decoupled=False)


def test_the_plan_is_frozen(tmp_path: Path) -> None:
    p = plan(f"output_dir={tmp_path}")
    assert p.output_dir == tmp_path
    with pytest.raises(AttributeError):
        p.seed = 3  # type: ignore[misc]
