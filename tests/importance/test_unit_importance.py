"""S2.2 unit importance: naive reference, masking, no trace on training, FSDP2 on two gloo ranks.

The model is conftest's tiny random Qwen3 (4 layers, fp32, CPU) expanded after layers 1 and 3
(copies at 2 and 5, the only trainable layers), then trained for a few AdamW steps so that no
copy tensor is zero any more (a fresh copy has zero output projections, which zeroes every
gradient of its attention and MLP). The naive reference shares no code with the
implementation: per batch ``loss.backward()`` into ``.grad``, ``Σ_b |g_b|`` accumulated in a
parameter-sized buffer, then ``mean(|θ| · acc / B)``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import QWEN3_LAYER_UNITS, TINY_QWEN3, init_gloo, save_hf_model
from importance_fixtures import IGNORE, pad_batches
from torch import nn
from torchtune import training
from torchtune.modules import TransformerSelfAttentionLayer

from adept_components.checkpointing import HFCheckpointer
from adept_components.data.probe import ProbeData, ProbeSample, ProbeSetInfo, probe_batches
from adept_components.expansion import ExpansionMetadata, expand_model, expand_state_dict
from adept_components.importance import row_importance, unit_conflict, unit_importance
from adept_components.trainable import freeze_all_but

META = ExpansionMetadata(base_num_layers=4, source_layers=(1, 3))
COPIES = META.copy_positions  # [2, 5]
UNITS = [f"layers.{layer}.{unit}" for layer in COPIES for unit in QWEN3_LAYER_UNITS]
VOCAB = TINY_QWEN3["vocab_size"]
# (sample length, masked prompt length) per probe sample: text and instruction-style samples.
SAMPLES = [(12, 0), (9, 3), (16, 0), (5, 2), (8, 0), (14, 6), (7, 0), (16, 4), (3, 0), (11, 0)]


# ---------------------------------------------------------------- fixtures and reference


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf_model(tmp_path_factory.mktemp("qwen3"), TINY_QWEN3)


def expanded_model(directory: Path, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The expanded tiny Qwen3, copies trainable; ``state`` (an earlier ``state_dict``) or
    the checkpoint expanded and then trained for three AdamW steps."""
    checkpointer = HFCheckpointer(str(directory), str(directory / "unused"))
    model = expand_model(checkpointer.architecture, META, max_seq_len=64)
    if state is not None:
        model.load_state_dict(state)
        freeze_all_but(model, COPIES)
        return model
    model.load_state_dict(expand_state_dict(checkpointer.load_state_dict(), META))
    freeze_all_but(model, COPIES)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        tokens = torch.randint(0, VOCAB, (2, 16), generator=generator)
        training_loss(model, tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model


def training_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token mean CE on a packed batch, as the training loop computes it."""
    logits = model(tokens)  # [b, s, v]
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def probe(batch_size: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded probe batches built by ``probe_batches`` from random samples."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for length, prompt in SAMPLES:
        tokens = torch.randint(1, VOCAB, (length,), generator=generator).tolist()
        samples.append(ProbeSample(tokens=tokens, labels=[IGNORE] * prompt + tokens[prompt:]))
    info = ProbeSetInfo("random", "text", "train", len(samples), 16, 0)
    return probe_batches(ProbeData(samples=samples, pad_id=0, info=info), batch_size)


def naive_unit_importance(model: nn.Module, batches) -> dict[str, float]:
    """Spec S2.2 by the book: ``.grad`` per batch, ``Σ|g|`` buffer, ``mean(|θ| · Σ|g| / B)``."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    model.eval()
    for tokens, labels in batches:
        model.zero_grad(set_to_none=True)
        logits = model(tokens)  # [b, s, v]
        F.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=IGNORE
        ).backward()
        for name, param in params.items():
            acc[name] += param.grad.double().abs()
    model.zero_grad(set_to_none=True)
    return {
        n: (p.detach().double().abs() * acc[n] / len(batches)).mean().item()
        for n, p in params.items()
    }


def assert_scores_close(got: dict[str, float], want: dict[str, float], rel: float) -> None:
    assert list(got) == list(want)
    bad = {n: (got[n], want[n]) for n in want if got[n] != pytest.approx(want[n], rel=rel)}
    assert not bad, bad


# ---------------------------------------------------------------- values


def test_equals_naive_reference(qwen3_dir: Path) -> None:
    model = expanded_model(qwen3_dir)
    batches = probe()
    scores = unit_importance(model, batches)
    assert list(scores) == UNITS  # every tensor of both copies, model order, bare names
    assert all(s > 0 for s in scores.values()), scores  # no unit trivially zero
    assert len(set(scores.values())) == len(scores)
    assert_scores_close(scores, naive_unit_importance(model, batches), rel=1e-6)


def test_row_importance_equals_the_naive_reference_per_row(qwen3_dir: Path) -> None:
    """unit_tuning.units=rows: each row's mean of |θ|·mean|g|; a vector stays one unit."""
    model, batches = expanded_model(qwen3_dir), probe()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    for tokens, labels in batches:
        model.zero_grad(set_to_none=True)
        logits = model(tokens)
        F.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=IGNORE
        ).backward()
        for name, param in params.items():
            acc[name] += param.grad.double().abs()
    model.zero_grad(set_to_none=True)
    rows = row_importance(model, batches)
    assert list(rows) == list(params)
    for name, param in params.items():
        product = param.detach().double().abs() * acc[name] / len(batches)
        want = product.mean(dim=1) if param.dim() == 2 else product.mean().reshape(1)
        torch.testing.assert_close(rows[name], want, rtol=1e-6, atol=0)
    whole = unit_importance(model, batches)  # a tensor's score is the mean of its rows'
    for name in ("layers.2.attn.q_proj.weight", "layers.5.mlp.w2.weight"):
        assert float(rows[name].mean()) == pytest.approx(whole[name], rel=1e-9)


def test_units_subset_and_order(qwen3_dir: Path) -> None:
    model = expanded_model(qwen3_dir)
    batches = probe()
    full = unit_importance(model, batches)
    wanted = ["layers.5.mlp.w2.weight", "layers.2._checkpoint_wrapped_module.sa_norm.scale"]
    scores = unit_importance(model, batches, units=wanted)
    assert list(scores) == ["layers.5.mlp.w2.weight", "layers.2.sa_norm.scale"]
    for name, score in scores.items():
        assert score == pytest.approx(full[name], rel=1e-12)


def test_wrapped_model_gives_the_same_scores(qwen3_dir: Path) -> None:
    """Activation checkpointing (renamed parameters) and chunked output logits."""
    model = expanded_model(qwen3_dir)
    batches = probe()
    plain = unit_importance(model, batches)
    training.set_activation_checkpointing(model, auto_wrap_policy={TransformerSelfAttentionLayer})
    model.set_num_output_chunks(4)
    assert "layers.2._checkpoint_wrapped_module.attn.q_proj.weight" in dict(
        model.named_parameters()
    )
    assert_scores_close(unit_importance(model, batches), plain, rel=1e-6)


def test_padding_and_empty_batches_change_nothing(qwen3_dir: Path) -> None:
    model = expanded_model(qwen3_dir)
    batches = probe()
    plain = unit_importance(model, batches)
    padded = pad_batches(batches, extra=9)
    assert_scores_close(unit_importance(model, padded), plain, rel=1e-6)
    # A batch with no supervised token is no batch: it does not count in B.
    tokens = torch.randint(1, VOCAB, (2, 10), generator=torch.Generator().manual_seed(5))
    empty = (tokens, torch.full_like(tokens, IGNORE))
    assert_scores_close(unit_importance(model, [*batches, empty]), plain, rel=1e-6)
    # Sanity: dropping a real batch does change the scores.
    assert unit_importance(model, batches[1:]) != pytest.approx(plain, rel=1e-3)


# ---------------------------------------------------------------- no trace on training


def test_training_gradients_unchanged_by_a_probe(qwen3_dir: Path) -> None:
    with_probe = expanded_model(qwen3_dir)
    without = copy.deepcopy(with_probe)
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(9))

    unit_importance(with_probe, probe())
    training_loss(with_probe, tokens).backward()
    training_loss(without, tokens).backward()
    for (name, a), (_, b) in zip(
        with_probe.named_parameters(), without.named_parameters(), strict=True
    ):
        assert (a.grad is None) == (b.grad is None), name
        assert a.grad is None or torch.equal(a.grad, b.grad), name


def test_existing_gradients_modes_flags_rng_and_weights_unchanged(qwen3_dir: Path) -> None:
    model = expanded_model(qwen3_dir)
    training.set_activation_checkpointing(model, auto_wrap_policy={TransformerSelfAttentionLayer})
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(9))
    training_loss(model, tokens).backward()  # a half-accumulated step
    grads = {n: p.grad for n, p in model.named_parameters()}
    grad_values = {n: g.clone() for n, g in grads.items() if g is not None}
    assert len(grad_values) == len(UNITS)
    weights = {n: t.clone() for n, t in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()
    model.layers[5].mlp.eval()  # a mixed mode must come back as it was
    modes = {n: m.training for n, m in model.named_modules()}
    below_copies_needs_grad = []
    hooks = [
        model.layers[i].register_forward_hook(
            lambda m, args, out: below_copies_needs_grad.append(out.requires_grad)
        )
        for i in (0, 1)
    ]
    torch.manual_seed(1234)
    rng = torch.get_rng_state()

    unit_importance(model, probe())

    for hook in hooks:
        hook.remove()
    assert torch.equal(torch.get_rng_state(), rng)
    assert below_copies_needs_grad == [False] * len(below_copies_needs_grad) != []
    for name, param in model.named_parameters():
        assert param.grad is grads[name], name  # the same tensor object ...
        if name in grad_values:
            assert torch.equal(param.grad, grad_values[name]), name  # ... with the same values
        assert param.requires_grad == flags[name], name
    assert {n: m.training for n, m in model.named_modules()} == modes
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name  # no optimizer step


# ---------------------------------------------------------------- errors


def test_errors(qwen3_dir: Path) -> None:
    model = expanded_model(qwen3_dir)
    batches = probe()
    with pytest.raises(ValueError, match="no batches"):
        unit_importance(model, [])
    with pytest.raises(ValueError, match="units is empty"):
        unit_importance(model, batches, units=[])
    with pytest.raises(ValueError, match="not one string"):
        unit_importance(model, batches, units="layers.2.sa_norm.scale")
    with pytest.raises(ValueError, match=r"repeats \['layers.2.sa_norm.scale'\]"):
        unit_importance(model, batches, units=["layers.2.sa_norm.scale"] * 2)
    with pytest.raises(ValueError, match=r"name no parameter.*layers.2.attn.q_proj.weight"):
        unit_importance(model, batches, units=["layers.2.attn.q_prj.weight"])
    with pytest.raises(ValueError, match=r"\['layers.0.sa_norm.scale'\] are frozen"):
        unit_importance(model, batches, units=["layers.0.sa_norm.scale"])
    tokens, labels = batches[0]
    with pytest.raises(ValueError, match="no supervised token"):
        unit_importance(model, [(tokens, torch.full_like(labels, IGNORE))])
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        unit_importance(model, batches)


# ---------------------------------------------------------------- FSDP2, two gloo ranks

# 5 batches (ranks get 3 and 2; rank 1 runs a zero-weight pass), one without a supervised token.
DIST_BATCH_SIZE = 2


def _dist_probe() -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = probe(batch_size=DIST_BATCH_SIZE)
    tokens, labels = batches[3]
    batches[3] = (tokens, torch.full_like(labels, IGNORE))
    return batches


def _count_reduce_scatters() -> list[str]:
    """Record every reduce-scatter call (FSDP2's gradient reduction) in the returned list."""
    calls: list[str] = []
    for name in ("reduce_scatter_single", "reduce_scatter_tensor", "reduce_scatter"):
        original = getattr(dist, name, None)
        if original is None:
            continue

        def counted(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(dist, name, counted)
    return calls


def _fsdp_worker(rank: int, world: int, init_file: str, directory: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    init_gloo(rank, world, init_file)
    try:
        saved = torch.load(Path(out_dir) / "case.pt", weights_only=True)
        mesh = init_device_mesh("cpu", (world,))
        reductions = _count_reduce_scatters()
        results = {}
        for checkpointing in (False, True):
            reductions.clear()
            model = expanded_model(Path(directory), saved["state"])
            if checkpointing:
                training.set_activation_checkpointing(
                    model, auto_wrap_policy={TransformerSelfAttentionLayer}
                )
            for layer in model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            training_loss(model, saved["tokens"]).backward()  # training grads, reduce-scattered
            training_reductions = len(reductions)
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            values = {n: g.to_local().clone() for n, g in grads.items()}
            rng = torch.get_rng_state()
            scores = unit_importance(model, saved["batches"])
            results[checkpointing] = {
                "scores": scores,
                "training_reductions": training_reductions,
                "probe_reductions": len(reductions) - training_reductions,
                "sharded": all(type(p).__name__ == "DTensor" for p in model.parameters()),
                "grads_kept": len(grads) == len(UNITS)
                and all(
                    p.grad is grads[n] and torch.equal(p.grad.to_local(), values[n])
                    for n, p in model.named_parameters()
                    if n in grads
                ),
                "rng_kept": torch.equal(torch.get_rng_state(), rng),
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp2_two_ranks_equal_one_process(qwen3_dir: Path, tmp_path: Path) -> None:
    """``fully_shard`` on every layer and the root, cpu mesh, plain and activation-checkpointed."""
    model = expanded_model(qwen3_dir)
    batches = _dist_probe()
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(9))
    torch.save(
        {"state": model.state_dict(), "batches": batches, "tokens": tokens},
        tmp_path / "case.pt",
    )
    mp.spawn(
        _fsdp_worker,
        args=(2, str(tmp_path / "init"), str(qwen3_dir), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    single = unit_importance(model, batches)
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for checkpointing, got in results.items():
            assert got["sharded"], (rank, checkpointing)
            assert got["grads_kept"], (rank, checkpointing)
            assert got["rng_kept"], (rank, checkpointing)
            # The counter sees training's gradient reduction, and none during the probe.
            assert got["training_reductions"] > 0, (rank, checkpointing)
            assert got["probe_reductions"] == 0, (rank, checkpointing)
            assert_scores_close(got["scores"], single, rel=1e-6)
    # Sanity: one rank's share alone scores differently, so the all-reduce mattered.
    assert unit_importance(model, batches[0::2]) != pytest.approx(single, rel=1e-3)


def _conflict_worker(rank: int, world: int, init_file: str, directory: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    init_gloo(rank, world, init_file)
    try:
        saved = torch.load(Path(out_dir) / "case.pt", weights_only=True)
        mesh = init_device_mesh("cpu", (world,))
        model = expanded_model(Path(directory), saved["state"])
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        scores = unit_conflict(model, saved["batches"], saved["domain"])
        kept = all(p.grad is None for p in model.parameters())
        rows = row_importance(model, saved["batches"])
        torch.save(
            {"scores": scores, "kept": kept, "rows": rows}, Path(out_dir) / f"conflict{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def test_fsdp2_conflict_scores_on_two_ranks_equal_one_process(
    qwen3_dir: Path, tmp_path: Path
) -> None:
    """unit_tuning.scoring=conflict and units=rows under FSDP2: the one-process scores."""
    model = expanded_model(qwen3_dir)
    batches, domain = _dist_probe(), probe(batch_size=DIST_BATCH_SIZE, seed=5)
    torch.save(
        {"state": model.state_dict(), "batches": batches, "domain": domain}, tmp_path / "case.pt"
    )
    mp.spawn(
        _conflict_worker,
        args=(2, str(tmp_path / "init"), str(qwen3_dir), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    single = unit_conflict(model, batches, domain)
    single_rows = row_importance(model, batches)
    assert any(score > 0 for score in single.values())
    for rank in range(2):
        got = torch.load(tmp_path / f"conflict{rank}.pt", weights_only=True)
        assert got["kept"], rank
        assert list(got["scores"]) == list(single)
        for name, score in single.items():
            assert got["scores"][name] == pytest.approx(score, abs=1e-6), (rank, name)
        for name, rows in single_rows.items():
            torch.testing.assert_close(got["rows"][name], rows, rtol=1e-6, atol=0)
