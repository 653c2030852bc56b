"""The deferred output head: the same loss and gradients as whole logits, without them.

A tiny Gemma 3 (tied head) and a tiny Qwen3 (untied) compute the loss three ways: whole
logits through ``F.cross_entropy``, torchtune's chunked logits, and ``HiddenChunk`` s that
``ChunkedHeadCrossEntropy`` projects itself. Losses and every gradient must agree, and while
the deferred forward and backward run, no tensor over the vocabulary is saved for the
backward.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_GEMMA3, TINY_QWEN3, save_hf_model
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX

from adept_components.checkpointing import HFCheckpointer
from adept_components.losses import ChunkedHeadCrossEntropy, shift_labels
from adept_components.models import model_from_hf_config
from adept_components.models.decoder import HiddenChunk


def _model(tmp_path: Path, arch: dict) -> torch.nn.Module:
    src = save_hf_model(tmp_path / "hf", arch)
    model = model_from_hf_config(str(src))
    HFCheckpointer(str(src), str(tmp_path / "out")).load_into(model)
    return model


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("arch", [TINY_GEMMA3, TINY_QWEN3], ids=["gemma3_tied", "qwen3_untied"])
def test_deferred_head_gives_the_loss_and_gradients_of_whole_logits(
    tmp_path: Path, arch: dict
) -> None:
    model = _model(tmp_path, arch)
    tokens = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(0))
    targets = shift_labels(tokens)
    targets[0, :5] = CROSS_ENTROPY_IGNORE_IDX  # ignored positions count in neither

    whole = F.cross_entropy(
        model(tokens).flatten(0, 1), targets.flatten(), ignore_index=CROSS_ENTROPY_IGNORE_IDX
    )
    whole.backward()
    expected = _grads(model)

    loss_fn = ChunkedHeadCrossEntropy(num_output_chunks=4)
    model.set_num_output_chunks(4)
    model.defer_head = True
    output = model(tokens)
    assert len(output) == 4 and all(isinstance(c, HiddenChunk) for c in output)
    deferred = loss_fn(output, targets)
    deferred.backward()
    assert torch.allclose(deferred, whole, rtol=1e-6, atol=0)
    got = _grads(model)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, rtol=1e-4, atol=1e-6), name

    model.defer_head = False  # torchtune's chunked logits, taken as they are
    assert torch.allclose(loss_fn(model(tokens), targets), whole, rtol=1e-6, atol=0)


def test_whole_logits_are_never_saved_for_the_backward(tmp_path: Path) -> None:
    """Autograd keeps no tensor over the vocabulary: each chunk's logits are recomputed."""
    vocab = 4096
    model = _model(tmp_path, {**TINY_GEMMA3, "vocab_size": vocab})
    tokens = torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(0))
    model.set_num_output_chunks(8)

    def saved_vocab_elements(defer: bool) -> int:
        model.defer_head = defer
        saved = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += tensor.numel() if tensor.dim() and tensor.shape[-1] == vocab else 0
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = ChunkedHeadCrossEntropy(8)(model(tokens), shift_labels(tokens))
        loss.backward()
        return saved

    assert saved_vocab_elements(defer=True) == 0
    # Guard: computed in the forward, every chunk's logits are kept: the whole [2, 64, vocab].
    assert saved_vocab_elements(defer=False) >= 2 * 64 * vocab


@pytest.mark.parametrize("chunks", [0, -1, 1.5, True])
def test_bad_chunk_counts_are_refused(chunks: object) -> None:
    with pytest.raises(ValueError, match="num_output_chunks"):
        ChunkedHeadCrossEntropy(chunks)
