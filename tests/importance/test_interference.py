"""Stage 1 by predicted interference (``importance.interference``): all candidates in one pass
equal each candidate scored alone, for both copy inits, and the model is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_GEMMA3, TINY_QWEN3, save_hf_model

from adept_components.checkpointing import HFCheckpointer
from adept_components.expansion import (
    ExpansionMetadata,
    copy_fills,
    expand_model,
    expand_state_dict,
)
from adept_components.importance.interference import interference_scores

ARCHES = {"qwen3": TINY_QWEN3, "gemma3": TINY_GEMMA3}


def batches(seed: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        tokens = torch.randint(0, 128, (2, 16), generator=generator)
        out.append((tokens, tokens.clone()))
    return out


@pytest.mark.parametrize("family", sorted(ARCHES))
def test_one_pass_equals_each_candidate_alone(family: str, tmp_path: Path) -> None:
    directory = save_hf_model(tmp_path / family, ARCHES[family])
    checkpointer = HFCheckpointer(str(directory), str(tmp_path / "out"))
    model = checkpointer.architecture.build()
    checkpointer.load_into(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fills = copy_fills(checkpointer.architecture.family_record)
    general, domain = batches(0, 2), batches(1, 3)

    together = interference_scores(model, general, domain, fills)
    alone = {
        layer: interference_scores(model, general, domain, fills, candidates=[layer])[layer]
        for layer in range(len(model.layers))
    }
    assert sorted(together) == list(range(len(model.layers)))
    for layer, score in alone.items():
        assert together[layer] == pytest.approx(score, rel=1e-4, abs=1e-6), layer
    assert interference_scores(model, general, domain, fills, chunk=2) == pytest.approx(
        together, rel=1e-4, abs=1e-6
    )
    assert len(set(round(s, 6) for s in together.values())) > 1  # the positions differ
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert len(model.layers) == ARCHES[family]["num_hidden_layers"]
    assert all(p.requires_grad for p in model.parameters())


def _batch_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Token-mean next-token loss in the model's dtype (float64 here: the test measures
    loss changes of ~1e-7)."""
    h = model.tok_embeddings(tokens)
    for layer in model.layers:
        h = layer(h)
    logits = model.output(model.norm(h))[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def _mean_loss(model: torch.nn.Module, batches: list) -> float:
    """Mean of the batches' token-mean losses (equal sizes: the token-mean over all)."""
    with torch.no_grad():
        return sum(float(_batch_loss(model, tokens)) for tokens, _ in batches) / len(batches)


# Adam's step sizes for the finite difference: large enough that the loss changes stand far
# above the model's fp32 norms (torchtune's RMSNorm computes in fp32 even in a float64
# model), small enough that the third-order terms the central difference leaves are negligible.
FINITE_LR = {"qwen3": 1e-4, "gemma3": 1e-3}


@pytest.mark.parametrize("family", sorted(ARCHES))
def test_score_is_the_loss_ratio_of_a_real_adam_step(family: str, tmp_path: Path) -> None:
    """Naive and independent: for each candidate alone, expand with the recipe's own code,
    let ``torch.optim.Adam`` (β1 = β2 → 1: uniform moments) see each domain batch's gradient
    (lr 0, the weights stay put), take one step on the last, and measure the general and
    domain losses on both sides of the start (central difference: Adam's step and its
    mirror). Their ratio is the score."""
    directory = save_hf_model(tmp_path / family, ARCHES[family])
    checkpointer = HFCheckpointer(str(directory), str(tmp_path / "out"))
    architecture = checkpointer.architecture
    base = architecture.build()
    checkpointer.load_into(base)
    base = base.double()
    fills = copy_fills(architecture.family_record)
    general, domain = batches(0, 2), batches(1, 3)
    scores = interference_scores(base, general, domain, fills)
    base_state = base.state_dict()

    for layer, score in scores.items():
        metadata = ExpansionMetadata(base_num_layers=len(base.layers), source_layers=(layer,))
        model = expand_model(architecture, metadata).double()
        model.load_state_dict(expand_state_dict(base_state, metadata, fills))
        model.eval()
        copy_params = list(model.layers[layer + 1].parameters())
        model.requires_grad_(False)
        for p in copy_params:
            p.requires_grad_(True)
        start = [p.detach().clone() for p in copy_params]
        beta = 1.0 - 1e-9
        optimizer = torch.optim.Adam(copy_params, lr=0.0, betas=(beta, beta), eps=1e-8)
        for i, (tokens, _) in enumerate(domain):
            optimizer.zero_grad()
            _batch_loss(model, tokens).backward()
            if i == len(domain) - 1:
                optimizer.param_groups[0]["lr"] = FINITE_LR[family]
            optimizer.step()
        stepped = _mean_loss(model, general), _mean_loss(model, domain)
        with torch.no_grad():
            for p, p0 in zip(copy_params, start, strict=True):
                p.copy_(2 * p0 - p)  # the mirror of Adam's step
        mirrored = _mean_loss(model, general), _mean_loss(model, domain)
        general_rise, domain_gain = stepped[0] - mirrored[0], mirrored[1] - stepped[1]
        assert domain_gain > 0, layer
        # 0.5%: the fp32 noise left in the smallest gains; scores of layers differ by 10x.
        assert general_rise / domain_gain == pytest.approx(score, rel=5e-3, abs=1e-5), layer


def test_bit_identical_for_the_same_inputs_and_refuses_bad_candidates(tmp_path: Path) -> None:
    directory = save_hf_model(tmp_path / "qwen3", TINY_QWEN3)
    checkpointer = HFCheckpointer(str(directory), str(tmp_path / "out"))
    model = checkpointer.architecture.build()
    checkpointer.load_into(model)
    fills = copy_fills(checkpointer.architecture.family_record)
    general, domain = batches(0, 2), batches(1, 2)
    first = interference_scores(model, general, domain, fills)
    assert interference_scores(model, general, domain, fills) == first  # bit for bit
    with pytest.raises(ValueError, match="distinct layers"):
        interference_scores(model, general, domain, fills, candidates=[1, 1])
    with pytest.raises(ValueError, match="distinct layers"):
        interference_scores(model, general, domain, fills, candidates=[4])
    with pytest.raises(ValueError, match="chunk=0"):
        interference_scores(model, general, domain, fills, chunk=0)
    with pytest.raises(ValueError, match="domain batches"):
        interference_scores(model, general, [], fills)
