"""Trainable weights in fp32 inside a bf16 model (``keep_trainable_in_fp32``, ``trainable_dtype``).

The expanded bf16 model with fp32 copies must still compute the bf16 base model exactly, keep
every frozen tensor (and the shared RoPE cache) as it was, and — the reason the option exists —
keep AdamW updates that a bf16 weight rounds away.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_LLAMA, TINY_QWEN3, save_hf_model
from torchtune import training

from adept_components.checkpointing import HFCheckpointer
from adept_components.expansion import ExpansionMetadata, expand_model, expand_state_dict
from adept_components.precision import keep_trainable_in_fp32
from adept_components.trainable import freeze_all_but

SOURCES = (1, 3)  # copies at positions 2 and 5 of 6


def _expanded_bf16(directory: Path, tmp: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(bf16 base model, bf16 expanded model with the copies frozen-in), both eval mode."""
    ckpt = HFCheckpointer(str(directory), str(tmp / "unused"))
    state = {k: v.to(torch.bfloat16) for k, v in ckpt.load_state_dict().items()}
    meta = ExpansionMetadata(ckpt.architecture.num_layers, SOURCES)
    with training.set_default_dtype(torch.bfloat16):
        base = ckpt.architecture.build()
        expanded = expand_model(ckpt.architecture, meta)
    base.load_state_dict(state)
    expanded.load_state_dict(expand_state_dict(state, meta))
    freeze_all_but(expanded, meta.copy_positions)
    return base.eval(), expanded.eval()


@pytest.mark.parametrize("arch", [TINY_QWEN3, TINY_LLAMA], ids=["qwen3", "llama3"])
def test_fp32_copies_keep_the_base_function(tmp_path: Path, arch: dict) -> None:
    base, expanded = _expanded_bf16(save_hf_model(tmp_path / "base", arch), tmp_path)
    buffers = {name: b.dtype for name, b in expanded.named_buffers()}
    frozen = {n: p.clone() for n, p in expanded.named_parameters() if not p.requires_grad}
    kept = keep_trainable_in_fp32([expanded.layers[2], expanded.layers[5]], torch.bfloat16)

    assert kept == [expanded.layers[2], expanded.layers[5]]
    for name, param in expanded.named_parameters():
        expected = torch.float32 if param.requires_grad else torch.bfloat16
        assert param.dtype == expected, name
        assert param.requires_grad == name.startswith(("layers.2.", "layers.5.")), name
    assert all(torch.equal(frozen[n], p) for n, p in expanded.named_parameters() if n in frozen)
    assert {name: b.dtype for name, b in expanded.named_buffers()} == buffers

    tokens = torch.randint(
        0, arch["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(0)
    )
    copy_outputs = []
    expanded.layers[2].register_forward_hook(lambda m, i, out: copy_outputs.append(out.dtype))
    with torch.no_grad():
        expected, got = base(tokens), expanded(tokens)
    assert copy_outputs == [torch.bfloat16]  # the frozen layers above see bf16, as before
    assert torch.equal(got, expected)  # zero residual projections: exactly the base model

    expanded.train()
    expanded(tokens).float().logsumexp(-1).mean().backward()
    for name, param in expanded.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name
        if param.grad is not None:
            assert param.grad.dtype == torch.float32, name


def test_fp32_weights_keep_updates_bf16_rounds_away(tmp_path: Path) -> None:
    """One AdamW step of lr 1e-5 moves every weight by at most 1e-5. A bf16 weight with
    |w| > 2^-8 lies on a grid of at least 2^-15 ≈ 3.1e-5, so the step rounds back to the old
    value exactly; fp32 weights take it."""
    directory = save_hf_model(tmp_path / "base", TINY_QWEN3)
    tokens = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(0))
    moved = {}
    for fp32 in (False, True):
        _, model = _expanded_bf16(directory, tmp_path)
        with torch.no_grad():  # as after some training: residual projections not zero, so
            copy, source = model.layers[2], model.layers[1]  # every copy weight gets a gradient
            copy.attn.output_proj.weight.copy_(source.attn.output_proj.weight)
            copy.mlp.w2.weight.copy_(source.mlp.w2.weight)
        if fp32:
            keep_trainable_in_fp32([model.layers[2], model.layers[5]], torch.bfloat16)
        model.train()
        weight = model.layers[2].attn.q_proj.weight
        before = weight.detach().float().clone()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        model(tokens).float().logsumexp(-1).mean().backward()
        optimizer.step()
        large = before.abs() > 2**-8  # (2^-8 itself may round down to a finer grid)
        assert large.float().mean() > 0.5  # the test is about most weights
        change = (weight.detach().float() - before)[large]
        assert weight.grad[large].abs().min() > 0  # every one of them was pushed
        moved[fp32] = (change != 0).float().mean().item()
        assert change.abs().max() <= 1e-5 * (1 + 1e-3)
    assert moved[False] == 0.0  # pure bf16: every update of these weights lost
    assert moved[True] == 1.0  # fp32: every one kept


def test_nothing_to_do_in_fp32_runs(tmp_path: Path) -> None:
    ckpt = HFCheckpointer(
        str(save_hf_model(tmp_path / "base", TINY_QWEN3)), str(tmp_path / "unused")
    )
    model = ckpt.architecture.build()
    forward = model.layers[0].forward
    assert keep_trainable_in_fp32([model.layers[0]], torch.float32) == []
    assert model.layers[0].forward == forward
