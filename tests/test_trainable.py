"""What trains (``adept_components.trainable``): LoRA adapters on each family's decoder, their
merge into an HF checkpoint, their PEFT form, ``rank: match``, and every kind's resume record.

transformers and peft are the references: the merged checkpoint must give the unmerged
model's logits, and the PEFT adapter loaded onto the base model must give the merged one's.
"""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch
import transformers
from conftest import TINY_GEMMA3, TINY_LLAMA, TINY_QWEN3, hf_logits, rel_err, save_hf_model

from adept_components.checkpointing import HFCheckpointer
from adept_components.models import architecture_of
from adept_components.optim import build_optimizer
from adept_components.trainable import (
    ADAPTER_DIR,
    LORA_TARGETS,
    Adapters,
    Everything,
    Layers,
    Matrices,
    adapter_params,
    match_rank,
    trainable_from_json,
)

ARCHES = {"qwen3": TINY_QWEN3, "llama": TINY_LLAMA, "gemma3": TINY_GEMMA3}


def load(directory: Path) -> torch.nn.Module:
    """Our decoder with the HF checkpoint's weights, fp32."""
    checkpointer = HFCheckpointer(str(directory), str(directory.parent / "out"))
    model = checkpointer.architecture.build()
    checkpointer.load_into(model)
    return model


@pytest.mark.parametrize("family", sorted(ARCHES))
def test_adapters_train_alone_merge_exactly_and_load_with_peft(family: str, tmp_path: Path) -> None:
    base_dir = save_hf_model(tmp_path / family, ARCHES[family])
    model = load(base_dir)
    tokens = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(tokens)

    adapters = Adapters(tuple(LORA_TARGETS), rank=4, alpha=8.0, seed=0)
    summary = adapters.apply(model)
    with torch.no_grad():
        assert torch.equal(model(tokens), base)  # B = 0: the base model, exactly
    adapter_names = {
        f"layers.{i}.{LORA_TARGETS[t]}.lora_{ab}.weight"
        for i in range(len(model.layers))
        for t in LORA_TARGETS
        for ab in "ab"
    }
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained == adapter_names
    assert summary.trainable_params == adapter_params(model, tuple(LORA_TARGETS), 4)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(adapters.param_groups(model), "torch.optim.AdamW", lr=1e-2)
    for _ in range(3):
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == adapter_names
    with torch.no_grad():
        unmerged = model(tokens)

    state = dict(after)
    merged = adapters.hf_state(state)
    assert set(merged) == set(before) - adapter_names  # the base model's names, nothing else
    architecture = architecture_of(model)
    writer = adapters.write_beside(state, architecture, base_dir)
    out = HFCheckpointer(str(base_dir), str(tmp_path / "out")).save(
        merged, architecture, "merged", extra_writer=writer
    )
    saved = hf_logits(out, tokens)
    assert rel_err(saved, unmerged) <= 1e-5
    assert rel_err(saved, base) > 1e-3  # the adapters moved the model

    reference = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with_adapter = peft.PeftModel.from_pretrained(reference, out / ADAPTER_DIR).eval()
    with torch.no_grad():
        assert rel_err(with_adapter(tokens).logits, saved) <= 1e-5


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_rank_match_counts_within_five_percent_of_the_copies(family: str, tmp_path: Path) -> None:
    arch = {**ARCHES[family], "hidden_size": 256, "intermediate_size": 512}
    model = load(save_hf_model(tmp_path / family, arch))
    targets = tuple(LORA_TARGETS)
    per_layer = sum(p.numel() for p in model.layers[0].parameters())
    match = match_rank(model, targets, k=2)
    assert match.copy_params == 2 * per_layer
    assert match.adapter_params == adapter_params(model, targets, match.rank)
    assert abs(match.ratio - 1) <= 0.05, match
    for other in (match.rank - 1, match.rank + 1):  # the closest rank, not just a close one
        assert abs(adapter_params(model, targets, other) - match.copy_params) >= abs(
            match.adapter_params - match.copy_params
        )
    # Fewer targets, a higher rank for the same count.
    assert match_rank(model, ("q_proj", "v_proj"), k=2).rank > match.rank


def test_every_kind_round_trips_through_its_resume_record() -> None:
    sets = [
        Everything(),
        Layers((2, 5)),
        Matrices(("layers.0.attn.q_proj.weight",)),
        Adapters(("q_proj", "v_proj"), rank=8, alpha=16.0, dropout=0.1, seed=3),
    ]
    for trainable in sets:
        assert trainable_from_json(trainable.to_json()) == trainable
    # Training states written before the record existed.
    assert trainable_from_json({"trainable_layers": [4, 7], "trainable_matrices": None}) == Layers(
        (4, 7)
    )
    assert (
        trainable_from_json({"trainable_layers": None, "trainable_matrices": None}) == Everything()
    )
    with pytest.raises(ValueError, match="trainable set 'bogus'"):
        trainable_from_json({"kind": "bogus"})
