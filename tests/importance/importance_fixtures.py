"""Tiny decoders and probe batches shared by the importance tests (no checkpoint needed)."""

from __future__ import annotations

import torch
from conftest import TINY_LLAMA, TINY_QWEN3

from adept_components.models import ModelArchitecture

IGNORE = -100
ARCHS = {"qwen3": TINY_QWEN3, "llama": TINY_LLAMA}
NEAR_IDENTITY = (1, 4)


def tiny_model(
    family: str = "qwen3",
    num_layers: int = 6,
    near_identity: tuple[int, ...] = NEAR_IDENTITY,
    seed: int = 0,
    max_seq_len: int = 64,
) -> torch.nn.Module:
    """A random fp32 decoder whose ``near_identity`` layers add almost nothing to the residual.

    Scaling a layer's attention output projection and MLP down projection by 1e-4 scales its
    residual contribution by 1e-4, so skipping it barely changes the loss.
    """
    arch = ModelArchitecture.from_hf_config({**ARCHS[family], "num_hidden_layers": num_layers})
    torch.manual_seed(seed)
    model = arch.build(max_seq_len=max_seq_len)
    with torch.no_grad():
        for index in near_identity:
            model.layers[index].attn.output_proj.weight.mul_(1e-4)
            model.layers[index].mlp.w2.weight.mul_(1e-4)
    return model


def self_labelled_batches(
    model: torch.nn.Module,
    lengths: list[list[int]],
    seed: int = 0,
    prompt_len: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded batches of random tokens labelled with the model's own greedy predictions.

    With such labels the full model is locally "right", so removing a layer that matters
    raises the loss reliably, while a random model on random labels could go either way.
    ``lengths`` gives each batch's sample lengths; the first ``prompt_len`` labels of each
    sample are masked like an instruction prompt.
    """
    generator = torch.Generator().manual_seed(seed)
    vocab = model.tok_embeddings.num_embeddings
    batches = []
    for batch_lengths in lengths:
        width = max(batch_lengths)
        tokens = torch.randint(0, vocab, (len(batch_lengths), width), generator=generator)
        with torch.no_grad():
            predictions = model(tokens).argmax(-1)  # [b, s]
        labels = torch.full_like(tokens, IGNORE)
        labels[:, 1:] = predictions[:, :-1]
        for row, n in enumerate(batch_lengths):
            tokens[row, n:] = 0
            labels[row, n:] = IGNORE
            labels[row, :prompt_len] = IGNORE
        batches.append((tokens, labels))
    return batches


def pad_batches(
    batches: list[tuple[torch.Tensor, torch.Tensor]], extra: int, pad_id: int = 7
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Append ``extra`` pad columns (token ``pad_id``, label ignored) to every batch."""
    padded = []
    for tokens, labels in batches:
        b = tokens.shape[0]
        padded.append(
            (
                torch.cat([tokens, torch.full((b, extra), pad_id, dtype=tokens.dtype)], dim=1),
                torch.cat([labels, torch.full((b, extra), IGNORE, dtype=labels.dtype)], dim=1),
            )
        )
    return padded
