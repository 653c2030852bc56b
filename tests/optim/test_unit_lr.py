"""S2.3 per-unit LR scales and S2.4 refresh: exact lrs, no compounding, state untouched, resume."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_QWEN3, save_hf_model
from optim_fixtures import (
    BASE_LR,
    COPIES,
    TOTAL,
    WARMUP,
    cosine_with_warmup,
    lm_loss,
    named_groups,
    reference_scales,
    tiny_qwen3,
)
from torch.optim.lr_scheduler import ExponentialLR, StepLR
from torchtune.training import get_cosine_schedule_with_warmup, get_lr

from adept_components.optim import RefreshPolicy, UnitScaledScheduler, lr_scales, unit_optimizer

Q = "layers.1.attn.q_proj.weight"
K = "layers.1.attn.k_proj.weight"
W2 = "layers.1.mlp.w2.weight"
SA = "layers.1.sa_norm.scale"
QN = "layers.1.attn.q_norm.scale"
UNITS = [Q, K, W2, SA, QN]
# Importances fixed by the test: refreshes at steps 3 (warmup), 20 and 35 (cosine decay).
IMPORTANCE = {
    3: {Q: 0.5, K: 2.0, W2: 3.0, SA: 0.25, QN: 1.0},
    20: {Q: 4.0, K: 4.0, W2: 4.0, SA: 4.0, QN: 4.0},  # all equal: w = 1
    35: {Q: 1e-3, K: 7.5, W2: 2.5, SA: 0.125, QN: 0.0625},
}


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's tiny Qwen3, written once per module."""
    return save_hf_model(tmp_path_factory.mktemp("qwen3"), TINY_QWEN3)


# ---------------------------------------------------------------------------------- lr_scales


def test_lr_scales_paper_formula_exact_values() -> None:
    scales = lr_scales(IMPORTANCE[3])
    # lo = 0.25 (SA), hi = 3.0 (W2): w = 2 (1 - (I - 0.25) / 2.75)
    assert scales[SA] == 2.0 and scales[W2] == 0.0
    assert scales[Q] == 2.0 * (1.0 - (0.5 - 0.25) / (3.0 - 0.25))
    assert scales[Q] == pytest.approx(2.0 - 0.5 / 2.75, abs=1e-15)
    assert list(scales) == list(IMPORTANCE[3])  # input order kept
    assert lr_scales(IMPORTANCE[20]) == dict.fromkeys(UNITS, 1.0)
    assert lr_scales({Q: -3.0}) == {Q: 1.0}


@pytest.mark.parametrize(
    ("options", "expected_extremes"),
    [
        ({}, {SA: 2.0, W2: 0.0}),
        ({"min_scale": 0.5}, {SA: 2.0, W2: 0.5}),
        ({"direction": "domain"}, {SA: 0.0, W2: 2.0}),
        ({"direction": "domain", "min_scale": 0.3}, {SA: 0.3, W2: 2.0}),
        # norms (SA 0.25, QN 1.0) and matrices (Q 0.5 … W2 3.0) normalised apart
        ({"separate_norm_range": True}, {SA: 2.0, QN: 0.0, Q: 2.0, W2: 0.0}),
    ],
)
def test_lr_scales_options(options: dict, expected_extremes: dict[str, float]) -> None:
    scales = lr_scales(IMPORTANCE[3], **options)
    assert scales == reference_scales(IMPORTANCE[3], **options)
    for name, value in expected_extremes.items():
        assert scales[name] == value, name
    floor = options.get("min_scale", 0.0)
    assert all(floor <= w <= 2.0 for w in scales.values())


def test_lr_scales_min_scale_also_floors_the_uniform_case() -> None:
    assert lr_scales(IMPORTANCE[20], min_scale=1.5) == dict.fromkeys(UNITS, 1.5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_scale": -0.1}, "min_scale"),
        ({"min_scale": 2.5}, "min_scale"),
        ({"min_scale": math.nan}, "min_scale"),
        ({"direction": "target"}, "direction"),
        ({"importance": {}}, "importance is empty"),
        ({"importance": {Q: math.nan, K: 1.0}}, "non-finite"),
        ({"importance": {Q: math.inf, K: 1.0}}, "non-finite"),
    ],
)
def test_lr_scales_bad_arguments(kwargs: dict, field: str) -> None:
    args = {"importance": IMPORTANCE[3], **kwargs}
    with pytest.raises(ValueError, match=field):
        lr_scales(**args)


# ------------------------------------------------------------ exact lrs under torchtune cosine


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"min_scale": 0.25},
        {"separate_norm_range": True},
        {"direction": "domain"},
    ],
)
def test_every_group_lr_is_base_times_schedule_times_scale(options: dict) -> None:
    optimizer = named_groups(UNITS)
    scheduler = UnitScaledScheduler(
        optimizer, get_cosine_schedule_with_warmup(optimizer, WARMUP, TOTAL)
    )
    scales = dict.fromkeys(UNITS, 1.0)  # uniform until the first refresh (S2.4)
    seen_refreshes = []
    for step in range(TOTAL + 1):
        if step > 0:
            optimizer.step()
            scheduler.step()
        if step in IMPORTANCE:
            scales = reference_scales(IMPORTANCE[step], **options)
            scheduler.set_scales(lr_scales(IMPORTANCE[step], **options), step=step)
            seen_refreshes.append(step)
        schedule = cosine_with_warmup(step)
        for group in optimizer.param_groups:
            assert group["lr"] == BASE_LR * schedule * scales[group["name"]], (step, group["name"])
            assert scheduler.lr_of(group["name"]) == group["lr"]
        assert scheduler.base_lr() == BASE_LR * schedule
    assert cosine_with_warmup(0) == 0.0 and cosine_with_warmup(WARMUP) == 1.0
    assert scheduler.last_refresh_step == 35
    assert [entry["step"] for entry in scheduler.history] == seen_refreshes
    assert scheduler.history[1]["scales"] == dict.fromkeys(UNITS, 1.0)


def test_fixed_multipliers_hold_from_the_first_step_and_survive_refreshes() -> None:
    """A zero_post_norm copy's gains: lr = base · schedule · scale · multiplier, always."""
    optimizer = named_groups(UNITS)
    multipliers = {UNITS[0]: 30.0, UNITS[-1]: 2.5}
    scheduler = UnitScaledScheduler(
        optimizer, get_cosine_schedule_with_warmup(optimizer, WARMUP, TOTAL), multipliers
    )
    scales = dict.fromkeys(UNITS, 1.0)
    for step in range(TOTAL + 1):
        if step > 0:
            optimizer.step()
            scheduler.step()
        if step == 8:
            scales = dict(lr_scales(IMPORTANCE[3]))
            scheduler.set_scales(scales, step=step)
        for name in UNITS:
            expected = (
                BASE_LR * cosine_with_warmup(step) * scales[name] * multipliers.get(name, 1.0)
            )
            assert scheduler.lr_of(name) == expected, (step, name)
    state = scheduler.state_dict()
    assert "multipliers" not in state  # config-derived: a resumed run passes them again
    again = UnitScaledScheduler(
        opt := named_groups(UNITS), get_cosine_schedule_with_warmup(opt, WARMUP, TOTAL), multipliers
    )
    again.load_state_dict(state)
    assert again.get_last_lr() == scheduler.get_last_lr()


@pytest.mark.parametrize(
    ("multipliers", "message"),
    [
        ({"layers.99.sa_scale.scale": 2.0}, "unknown"),
        ({UNITS[0]: 0.0}, "bad"),
        ({UNITS[0]: -1}, "bad"),
    ],
)
def test_bad_multipliers_are_refused(multipliers: dict, message: str) -> None:
    optimizer = named_groups(UNITS)
    with pytest.raises(ValueError, match=message):
        UnitScaledScheduler(optimizer, StepLR(optimizer, 2), multipliers)


def test_paper_default_pauses_the_most_important_unit() -> None:
    optimizer = named_groups(UNITS)
    scheduler = UnitScaledScheduler(
        optimizer, get_cosine_schedule_with_warmup(optimizer, WARMUP, TOTAL)
    )
    for _ in range(8):
        optimizer.step()
        scheduler.step()
    scheduler.set_scales(lr_scales(IMPORTANCE[3]), step=8)
    assert scheduler.lr_of(W2) == 0.0
    assert scheduler.lr_of(SA) == BASE_LR * cosine_with_warmup(8) * 2.0
    with pytest.raises(RuntimeError, match="different across all param groups"):
        get_lr(optimizer)  # torchtune refuses differing groups: log base_lr() instead


# ------------------------------------------------------------------ chainable schedulers


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda opt: ExponentialLR(opt, gamma=0.9),
        lambda opt: StepLR(opt, step_size=3, gamma=0.5),
    ],
    ids=["ExponentialLR", "StepLR"],
)
def test_chainable_scheduler_scales_never_compound(make_scheduler) -> None:
    optimizer = named_groups(UNITS)
    scheduler = UnitScaledScheduler(optimizer, make_scheduler(optimizer))
    # The same schedule on an unscaled twin: the lrs the units must be a multiple of.
    twin = named_groups(UNITS)
    twin_scheduler = make_scheduler(twin)
    refreshes = {
        2: {Q: 0.5, K: 0.5, W2: 0.5, SA: 0.5, QN: 0.5},
        5: {Q: 0.5, K: 0.5, W2: 0.5, SA: 0.5, QN: 0.5},  # same again: must not give 0.25
        6: {Q: 2.0, K: 0.0, W2: 1.25, SA: 0.75, QN: 1.0},
        7: {Q: 0.1, K: 1.9, W2: 1.0, SA: 0.5, QN: 0.0},
    }
    scales = dict.fromkeys(UNITS, 1.0)
    for step in range(1, 13):
        optimizer.step()
        scheduler.step()
        twin.step()
        twin_scheduler.step()
        if step in refreshes:
            scales = refreshes[step]
            scheduler.set_scales(scales, step=step)
        unscaled = twin.param_groups[0]["lr"]
        for group in optimizer.param_groups:
            assert group["unscaled_lr"] == unscaled
            assert group["lr"] == unscaled * scales[group["name"]], (step, group["name"])
    assert unscaled < BASE_LR  # the schedule really decayed
    assert [entry["step"] for entry in scheduler.history] == [2, 5, 6, 7]


# ------------------------------------------------------------ refresh leaves optimizer state


def test_refresh_leaves_adam_moments_bitwise_unchanged(qwen3_dir: Path) -> None:
    model = tiny_qwen3(qwen3_dir)
    optimizer = unit_optimizer(model, COPIES, lr=1e-2, weight_decay=0.1)
    scheduler = UnitScaledScheduler(optimizer, get_cosine_schedule_with_warmup(optimizer, 1, 20))
    for step in range(3):
        lm_loss(model, seed=step).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    state_before = {
        p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in optimizer.state
    }
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert len(state_before) == 22
    names = [g["name"] for g in optimizer.param_groups]
    importance = {name: float(i) for i, name in enumerate(names)}
    scheduler.set_scales(lr_scales(importance), step=3)

    for p, saved in state_before.items():
        assert set(optimizer.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
        for key, value in saved.items():
            assert torch.equal(optimizer.state[p][key], value), key
    for name, p in model.named_parameters():
        assert torch.equal(p, params_before[name]), name
    assert optimizer.param_groups[-1]["lr"] == 0.0  # the highest score is paused

    # The scaled lr reaches AdamW: the paused unit does not move on the next step, others do.
    lm_loss(model, seed=3).backward()
    optimizer.step()
    params = dict(model.named_parameters())
    paused = names[-1]
    assert torch.equal(params[paused], params_before[paused])
    assert not torch.equal(params[names[0]], params_before[names[0]])


# ------------------------------------------------------------------------ state_dict resume


def _train(model, optimizer, scheduler, steps: range) -> list[list[float]]:
    lrs = []
    for step in steps:
        lm_loss(model, seed=step).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        lrs.append([g["lr"] for g in optimizer.param_groups])
    return lrs


def _build(directory: Path, make_inner):
    model = tiny_qwen3(directory)
    optimizer = unit_optimizer(model, COPIES, lr=1e-3)
    return model, optimizer, make_inner


_COSINE = lambda opt: get_cosine_schedule_with_warmup(opt, WARMUP, TOTAL)  # noqa: E731
_EXPONENTIAL = lambda opt: ExponentialLR(opt, gamma=0.8)  # noqa: E731


@pytest.mark.parametrize("make_inner", [_COSINE, _EXPONENTIAL], ids=["cosine", "exponential"])
@pytest.mark.parametrize("optimizer_state_first", [False, True])
def test_state_dict_round_trip_matches_uninterrupted_run(
    qwen3_dir: Path, make_inner, optimizer_state_first: bool
) -> None:
    def importance(names: list[str]) -> dict[str, float]:
        return {name: float((7 * i) % 5) for i, name in enumerate(names)}

    # Uninterrupted: 7 steps, refresh, 5 more.
    model, optimizer, _ = _build(qwen3_dir, make_inner)
    scheduler = UnitScaledScheduler(optimizer, make_inner(optimizer))
    _train(model, optimizer, scheduler, range(7))
    names = [g["name"] for g in optimizer.param_groups]
    scheduler.set_scales(lr_scales(importance(names)), step=7)
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
        },
        buffer,
    )
    expected = _train(model, optimizer, scheduler, range(7, 12))

    # Resumed: fresh model, optimizer and scheduler, then load.
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    model2, optimizer2, _ = _build(qwen3_dir, make_inner)
    model2.load_state_dict(saved["model"])
    if optimizer_state_first:  # the order torchtune's recipes use
        optimizer2.load_state_dict(saved["optimizer"])
        scheduler2 = UnitScaledScheduler(optimizer2, make_inner(optimizer2))
    else:  # the order torch's scheduler docs recommend
        scheduler2 = UnitScaledScheduler(optimizer2, make_inner(optimizer2))
        optimizer2.load_state_dict(saved["optimizer"])
    scheduler2.load_state_dict(saved["lr_scheduler"])
    assert scheduler2.scales == scheduler.scales
    assert scheduler2.last_refresh_step == 7
    assert [h["step"] for h in scheduler2.history] == [7]
    resumed = _train(model2, optimizer2, scheduler2, range(7, 12))

    assert resumed == expected
    assert min(expected[-1]) == 0.0 and max(expected[-1]) > 0.0  # scales really applied
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), model2.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_load_state_dict_refuses_another_expansion() -> None:
    scheduler = UnitScaledScheduler(opt := named_groups(UNITS), StepLR(opt, 2))
    other = UnitScaledScheduler(
        opt2 := named_groups([*UNITS[:-1], "layers.9.sa_norm.scale"]), StepLR(opt2, 2)
    )
    with pytest.raises(ValueError, match=r"missing: \['layers.1.attn.q_norm.scale'\]"):
        scheduler.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="not a UnitScaledScheduler state"):
        scheduler.load_state_dict(StepLR(named_groups(UNITS), 2).state_dict())


# ---------------------------------------------------------------------------- bad arguments


def test_set_scales_validates_units_and_values() -> None:
    optimizer = named_groups(UNITS)
    scheduler = UnitScaledScheduler(optimizer, StepLR(optimizer, 2))
    full = dict.fromkeys(UNITS, 1.0)
    with pytest.raises(ValueError, match=r"missing: \['layers.1.attn.q_norm.scale'\]"):
        scheduler.set_scales({n: 1.0 for n in UNITS[:-1]}, step=1)
    with pytest.raises(ValueError, match=r"unknown: \['layers.1.attn.q_proj'\]"):
        scheduler.set_scales({**full, "layers.1.attn.q_proj": 1.0}, step=1)
    with pytest.raises(ValueError, match="finite and >= 0"):
        scheduler.set_scales({**full, Q: -0.5}, step=1)
    with pytest.raises(ValueError, match="step=-1"):
        scheduler.set_scales(full, step=-1)
    assert scheduler.history == [] and scheduler.last_refresh_step is None
    with pytest.raises(ValueError, match="closest"):
        scheduler.lr_of("layers.1.attn.q_proj")


def test_wrapper_needs_named_groups_of_its_scheduler() -> None:
    plain = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="no 'name'"):
        UnitScaledScheduler(plain, StepLR(plain, 2))
    optimizer = named_groups(UNITS)
    with pytest.raises(ValueError, match="another optimizer"):
        UnitScaledScheduler(optimizer, StepLR(named_groups(UNITS), 2))
    with pytest.raises(ValueError, match="names repeat"):
        UnitScaledScheduler(dup := named_groups([Q, Q]), StepLR(dup, 2))


# ----------------------------------------------------------------------------- RefreshPolicy


def test_refresh_policy_due_at_optimizer_step_multiples() -> None:
    assert [RefreshPolicy(refresh_every=3).due(s) for s in range(8)] == [
        False, False, False, True, False, False, True, False,
    ]  # fmt: skip
    assert RefreshPolicy(refresh_every=3, refresh_at_start=True).due(0)
    default = RefreshPolicy()
    assert default.refresh_every == 500 and not default.refresh_at_start
    assert [s for s in range(1, 1501) if default.due(s)] == [500, 1000, 1500]
    with pytest.raises(ValueError, match="step=-1"):
        default.due(-1)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "500"])
def test_refresh_policy_refuses_bad_interval(bad) -> None:
    with pytest.raises(ValueError, match="refresh_every"):
        RefreshPolicy(refresh_every=bad)
