"""Stage 1 by predicted interference (``importance.interference``): all candidates in one pass
equal each candidate scored alone, for both copy inits, and the model is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_GEMMA3, TINY_QWEN3, save_hf_model

from adept_components.checkpointing import HFCheckpointer
from adept_components.expansion import copy_fills
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
