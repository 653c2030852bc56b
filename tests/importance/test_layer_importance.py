"""S1.2/S1.3/S2.2 scores against naive references, masking, gradient hygiene and two gloo ranks.

Models are tiny random fp32 decoders (CPU). The naive references kept here share no code with
the implementation: mask-out removes the layer from ``model.layers`` and runs the full
``model(tokens)``; gradient scores use ``loss.backward()`` and ``.grad``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import init_gloo
from importance_fixtures import (
    IGNORE,
    NEAR_IDENTITY,
    pad_batches,
    self_labelled_batches,
    tiny_model,
)
from torch import nn

from adept_components.importance import (
    check_selected_layers,
    grad_cumulative_importance,
    layer_importance,
    mask_out_importance,
    mask_out_losses,
    probe_loss,
    rank_importance,
    select_layers,
)

LENGTHS = [[12, 9, 16], [16, 5], [7, 16, 11, 3]]


# ---------------------------------------------------------------- naive references


def naive_loss(model: nn.Module, batches) -> float:
    """Token-weighted CE from full ``model(tokens)`` logits."""
    total, count = 0.0, 0
    with torch.no_grad():
        for tokens, labels in batches:
            logits = model(tokens)  # [b, s, v]
            total += F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            ).item()
            count += int((labels[:, 1:] != IGNORE).sum())
    return total / count


def naive_mask_out(model: nn.Module, batches) -> list[float]:
    """I(l) from L+1 full forwards, each with layer l taken out of ``model.layers``."""
    model.eval()
    base = naive_loss(model, batches)
    layers = model.layers
    scores = []
    try:
        for skipped in range(len(layers)):
            model.layers = nn.ModuleList(m for i, m in enumerate(layers) if i != skipped)
            scores.append(naive_loss(model, batches) - base)
    finally:
        model.layers = layers
    return scores


def naive_gradient_scores(model: nn.Module, batches):
    """Per-tensor Σ|θ|·mean_b|g_b| with backward() into .grad, batch by batch."""
    model.eval()
    named = [(i, n, p) for i, layer in enumerate(model.layers) for n, p in layer.named_parameters()]
    abs_grad = {(i, n): torch.zeros_like(p) for i, n, p in named}
    for tokens, labels in batches:
        model.zero_grad(set_to_none=True)
        logits = model(tokens)
        F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE,
        ).backward()
        for i, n, p in named:
            abs_grad[(i, n)] += p.grad.abs()
    model.zero_grad(set_to_none=True)
    tensor = {
        (i, n): (p.detach().abs() * abs_grad[(i, n)]).sum().item() / len(batches)
        for i, n, p in named
    }
    layer_sums = [
        sum(v for (i, _), v in tensor.items() if i == layer) for layer in range(len(model.layers))
    ]
    units = {
        i: {n: tensor[(i, n)] / p.numel() for j, n, p in named if j == i}
        for i in range(len(model.layers))
    }
    return [s / max(layer_sums) for s in layer_sums], units


def _assert_units_close(got: dict, want: dict, rel: float) -> None:
    assert got.keys() == want.keys()
    for layer in want:
        assert got[layer].keys() == want[layer].keys()
        for name, value in want[layer].items():
            assert got[layer][name] == pytest.approx(value, rel=rel, abs=1e-12), (layer, name)


# ---------------------------------------------------------------- mask-out


def test_mask_out_ranks_near_identity_layers_lowest() -> None:
    model = tiny_model(near_identity=NEAR_IDENTITY)
    batches = self_labelled_batches(model, LENGTHS)

    scores = mask_out_importance(model, batches)

    near = [abs(scores[i]) for i in NEAR_IDENTITY]
    others = [scores[i] for i in range(6) if i not in NEAR_IDENTITY]
    assert max(near) < 1e-5
    assert min(others) > 1e-3  # a layer that matters raises the loss when skipped
    assert select_layers(scores, 2) == list(NEAR_IDENTITY)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_cached_mask_out_equals_naive_full_forwards(family: str) -> None:
    model = tiny_model(family, num_layers=5, near_identity=(2,), seed=1)
    batches = self_labelled_batches(model, LENGTHS, seed=1, prompt_len=2)

    cached = mask_out_losses(model, batches)
    naive = naive_mask_out(model, batches)

    assert cached.importance == pytest.approx(naive, abs=1e-6)
    assert cached.base_loss == pytest.approx(naive_loss(model, batches), abs=1e-6)
    assert cached.num_tokens == sum(int((lab[:, 1:] != IGNORE).sum()) for _, lab in batches)
    assert max(abs(s) for s in naive) > 1e-3  # the comparison is not between zeros


def test_probe_loss_is_token_weighted_not_batch_averaged() -> None:
    model = tiny_model(near_identity=())
    batches = self_labelled_batches(model, [[16], [16, 16, 16]], seed=2)
    merged = [(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))]

    loss = probe_loss(model, batches)

    assert loss == pytest.approx(naive_loss(model, merged), abs=1e-6)
    assert loss == pytest.approx(mask_out_losses(model, batches).base_loss, abs=1e-9)
    batch_mean = sum(naive_loss(model, [b]) for b in batches) / len(batches)
    assert abs(loss - batch_mean) > 1e-4  # the two definitions really differ here


def test_padding_changes_no_score() -> None:
    model = tiny_model()
    batches = self_labelled_batches(model, LENGTHS, seed=3, prompt_len=3)
    padded = pad_batches(batches, extra=9)

    assert probe_loss(model, padded) == pytest.approx(probe_loss(model, batches), abs=1e-6)
    assert mask_out_importance(model, padded) == pytest.approx(
        mask_out_importance(model, batches), abs=1e-6
    )
    plain, with_pads = (grad_cumulative_importance(model, b) for b in (batches, padded))
    assert with_pads.layer_scores == pytest.approx(plain.layer_scores, rel=1e-5)
    _assert_units_close(with_pads.unit_scores, plain.unit_scores, rel=1e-5)


def test_only_answer_positions_count() -> None:
    model = tiny_model()
    prompt_len = 4
    batches = self_labelled_batches(model, LENGTHS, seed=4, prompt_len=prompt_len)
    # Reference: per-position CE, keeping by hand the positions that predict an answer token
    # (next position >= prompt_len and inside the sample).
    total, count = 0.0, 0
    with torch.no_grad():
        for (tokens, labels), lengths in zip(batches, LENGTHS, strict=True):
            logits = model(tokens)
            for row, n in enumerate(lengths):
                for t in range(prompt_len - 1, n - 1):
                    total += F.cross_entropy(logits[row, t], labels[row, t + 1]).item()
                    count += 1

    assert mask_out_losses(model, batches).num_tokens == count
    assert probe_loss(model, batches) == pytest.approx(total / count, abs=1e-6)
    unmasked = [(t, torch.where(lab == IGNORE, t, lab)) for t, lab in batches]
    assert probe_loss(model, unmasked) != pytest.approx(total / count, abs=1e-3)


# ---------------------------------------------------------------- gradient scores


def test_gradient_scores_equal_naive_backward() -> None:
    model = tiny_model(seed=5)
    batches = self_labelled_batches(model, LENGTHS, seed=5, prompt_len=2)

    got = grad_cumulative_importance(model, batches)
    want_layers, want_units = naive_gradient_scores(model, batches)

    assert got.layer_scores == pytest.approx(want_layers, rel=1e-5)
    _assert_units_close(got.unit_scores, want_units, rel=1e-5)
    assert max(got.layer_scores) == 1.0
    assert len(got.unit_scores[0]) == 11  # Qwen3: 11 units per layer (spec S2.1)
    for index in NEAR_IDENTITY:  # near-identity layers have tiny |g·θ| on their scaled units
        assert got.layer_scores[index] < 1e-2


def test_gradient_scoring_leaves_no_grad_and_restores_state() -> None:
    model = tiny_model()
    batches = self_labelled_batches(model, LENGTHS)
    model.tok_embeddings.weight.requires_grad_(False)
    for param in model.layers[0].parameters():
        param.requires_grad_(False)
    model.layers[3].attn.q_proj.weight.grad = torch.ones_like(model.layers[3].attn.q_proj.weight)
    model.train()
    model.layers[2].eval()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}

    scores = grad_cumulative_importance(model, batches)

    assert all(p.grad is None for p in model.parameters())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert scores.layer_scores[0] > 0  # the frozen layer was still scored


def test_gradient_scoring_restores_flags_when_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    batches = self_labelled_batches(model, LENGTHS)
    for param in model.parameters():
        param.requires_grad_(False)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure in backward")

    monkeypatch.setattr(torch.autograd, "grad", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        grad_cumulative_importance(model, batches)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- rank, dispatch, selection


def test_rank_importance_known_values() -> None:
    # L = 3. Unit "a": layer 2 highest (rank 1), layer 0 (2), layer 1 (3).
    # Unit "b": layers 0 and 2 tie for highest (ranks 1 and 2 -> 1.5 each), layer 1 rank 3.
    units = {
        0: {"a": 0.5, "b": 2.0},
        1: {"a": 0.1, "b": 1.0},
        2: {"a": 0.9, "b": 2.0},
    }
    scores = rank_importance(units, 3)
    expected = [1 - (2 / 3 + 1.5 / 3) / 2, 1 - (3 / 3 + 3 / 3) / 2, 1 - (1 / 3 + 1.5 / 3) / 2]
    assert scores == pytest.approx(expected, abs=1e-12)
    assert scores[1] == 0.0 and select_layers(scores, 1) == [1]


@pytest.mark.parametrize(
    ("units", "match"),
    [
        ({0: {"a": 1.0}}, r"covers layers \[0\], expected 0..1"),
        ({0: {"a": 1.0}, 1: {"b": 1.0}}, "layer 1 has units"),
        ({0: {}, 1: {}}, "no units"),
        ({0: {"a": 1.0}, 1: {"a": math.nan}}, "non-finite"),
    ],
)
def test_rank_importance_rejects_bad_scores(units: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rank_importance(units, 2)


def test_layer_importance_dispatches_and_rejects_unknown_method() -> None:
    model = tiny_model()
    batches = self_labelled_batches(model, LENGTHS[:1])
    assert layer_importance(model, batches) == mask_out_importance(model, batches)
    gradient = grad_cumulative_importance(model, batches)
    assert layer_importance(model, batches, "grad-cumulative") == gradient.layer_scores
    assert layer_importance(model, batches, "rank") == rank_importance(gradient.unit_scores, 6)
    with pytest.raises(ValueError, match="method='fisher'"):
        layer_importance(model, batches, "fisher")


def test_select_layers_breaks_ties_by_index_and_validates() -> None:
    scores = [0.3, 0.1, 0.2, 0.1, 0.5]
    assert select_layers(scores, 1) == [1]
    assert select_layers(scores, 2) == [1, 3]
    assert select_layers(scores, 3) == [1, 2, 3]
    assert select_layers([0.0, 0.0, 0.0], 2) == [0, 1]
    with pytest.raises(ValueError, match="k=5 layers to expand, but the model has 5 layers"):
        select_layers(scores, 5)
    with pytest.raises(ValueError, match="k=0"):
        select_layers(scores, 0)
    with pytest.raises(ValueError, match=r"not finite for layers \[2\]"):
        select_layers([0.1, 0.2, math.nan], 1)


def test_check_selected_layers() -> None:
    assert check_selected_layers([5, 1, 3], 6) == [1, 3, 5]
    with pytest.raises(ValueError, match=r"layers=\[6\] but the base model has 6 layers"):
        check_selected_layers([6], 6)
    with pytest.raises(ValueError, match=r"repeats layers \[2\]"):
        check_selected_layers([2, 2], 6)
    with pytest.raises(ValueError, match="k=3 but k must be in 1..2"):
        check_selected_layers([0, 1, 2], 3)
    with pytest.raises(ValueError, match="k=0"):
        check_selected_layers([], 3)


# ---------------------------------------------------------------- bad inputs


def test_bad_probe_batches_raise_clear_errors() -> None:
    model = tiny_model()
    tokens = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="no batches"):
        mask_out_importance(model, [])
    with pytest.raises(ValueError, match="no supervised token"):
        probe_loss(model, [(tokens, torch.full_like(tokens, IGNORE))])
    all_masked = torch.full_like(tokens, IGNORE)
    all_masked[:, 0] = 3  # position 0 is never predicted, so this still counts nothing
    with pytest.raises(ValueError, match="no supervised token"):
        grad_cumulative_importance(model, [(tokens, all_masked)])
    with pytest.raises(ValueError, match="max_seq_len=64"):
        probe_loss(model, [(torch.zeros(1, 65, dtype=torch.long),) * 2])
    with pytest.raises(ValueError, match=r"tokens \(2, 8\) and labels \(2, 7\)"):
        probe_loss(model, [(tokens, tokens[:, :7])])


# ---------------------------------------------------------------- two gloo ranks

DIST_LENGTHS = [[12, 9], [16, 5, 8], [7, 16], [3, 14, 11], [10]]  # 5 batches: ranks get 3 and 2


def _dist_case():
    torch.set_num_threads(1)
    model = tiny_model(seed=7)
    return model, self_labelled_batches(model, DIST_LENGTHS, seed=7, prompt_len=2)


def _scores(model, batches) -> dict:
    gradient = grad_cumulative_importance(model, batches)
    return {
        "loss": probe_loss(model, batches),
        "mask_out": mask_out_losses(model, batches),
        "layers": gradient.layer_scores,
        "units": gradient.unit_scores,
    }


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    init_gloo(rank, world, init_file)
    try:
        model, batches = _dist_case()
        torch.save(_scores(model, batches), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model, batches = _dist_case()
    single = _scores(model, batches)

    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["loss"] == pytest.approx(single["loss"], abs=1e-6)
        assert got["mask_out"].num_tokens == single["mask_out"].num_tokens
        assert got["mask_out"].importance == pytest.approx(single["mask_out"].importance, abs=1e-6)
        assert got["mask_out"].base_loss == pytest.approx(single["mask_out"].base_loss, abs=1e-6)
        assert got["layers"] == pytest.approx(single["layers"], abs=1e-6)
        _assert_units_close(got["units"], single["units"], rel=1e-6)
    # Sanity: one rank's share alone gives different scores, so the all-reduce mattered.
    assert probe_loss(model, batches[0::2]) != pytest.approx(single["loss"], abs=1e-4)
