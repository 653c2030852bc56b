"""The pre-norm gated-MLP decoder that Qwen3, the Llama architecture and Gemma 3 share.

Qwen3 and Llama differ only inside attention (q/k norms, RoPE variant); Gemma 3 further in
its norms, activation, embedding scale and the norms on each branch's output. The block, the
MLP and the optionally tied head are the same torchtune modules, so one builder assembles them
around the parts a family supplies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchtune.modules import (
    FeedForward,
    RMSNorm,
    TiedLinear,
    TransformerDecoder,
    TransformerSelfAttentionLayer,
)


@dataclasses.dataclass(frozen=True)
class HiddenChunk:
    """A chunk of the final (normed) hidden states whose logits are not computed yet.

    ``Decoder`` returns these instead of logits when ``defer_head`` is set, so that the loss
    (``losses.ChunkedHeadCrossEntropy``) projects one chunk at a time and recomputes it in
    the backward pass: the whole ``[b, s, vocab]`` logits never exist (4 x 256 tokens of
    Gemma 3's 262k vocabulary are 1 GiB in fp32; 8 x 4096 are 34 GB).

    Attributes:
        hidden (torch.Tensor): [b, s_chunk, d].
        head (Callable[[torch.Tensor], torch.Tensor]): the output projection (``TiedLinear``
            or ``nn.Linear``).
    """

    hidden: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]

    @property
    def shape(self) -> torch.Size:
        """The hidden states' shape, [b, s_chunk, d]: ``shape[1]`` is the chunk's length."""
        return self.hidden.shape


class Decoder(TransformerDecoder):
    """torchtune's ``TransformerDecoder`` that can leave the output projection to the loss.

    With ``defer_head`` set (the recipe sets it when its loss supports it) and output chunks
    on (``set_num_output_chunks``), ``forward`` returns ``HiddenChunk`` s instead of logits.
    Everything else is torchtune's.
    """

    defer_head: bool = False

    def chunked_output(self, last_hidden_state: torch.Tensor) -> list[Any]:
        """The output in ``num_output_chunks`` chunks along the sequence: logits, or
        ``HiddenChunk`` s when ``defer_head`` is set.

        Args:
            last_hidden_state (torch.Tensor): [b, s, d], after the final norm.

        Returns:
            list: the chunks.
        """
        if not self.defer_head:
            return super().chunked_output(last_hidden_state)
        chunks = last_hidden_state.chunk(self.num_output_chunks, dim=1)
        return [HiddenChunk(chunk, self.output) for chunk in chunks]


def attention_layout(
    embed_dim: int, num_heads: int, num_kv_heads: int, head_dim: int, max_seq_len: int
) -> dict[str, Any]:
    """The arguments every family's grouped-query attention takes: widths and projections.

    Args:
        embed_dim (int): model width.
        num_heads (int): query heads.
        num_kv_heads (int): key/value heads (grouped-query attention).
        head_dim (int): per-head width.
        max_seq_len (int): longest sequence.

    Returns:
        dict[str, Any]: keyword arguments of torchtune's ``MultiHeadAttention`` (and of
        ``Qwen3Attention``): the four bias-free projections and the sizes.
    """
    return {
        "embed_dim": embed_dim,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "q_proj": nn.Linear(embed_dim, num_heads * head_dim, bias=False),
        "k_proj": nn.Linear(embed_dim, num_kv_heads * head_dim, bias=False),
        "v_proj": nn.Linear(embed_dim, num_kv_heads * head_dim, bias=False),
        "output_proj": nn.Linear(num_heads * head_dim, embed_dim, bias=False),
        "max_seq_len": max_seq_len,
    }


def gated_mlp_decoder(
    make_attention: Callable[[int], nn.Module],
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int,
    norm_eps: float,
    tie_word_embeddings: bool,
    make_norm: Callable[[int, float], nn.Module] = RMSNorm,
    activation: Callable[[], nn.Module] = nn.SiLU,
    post_branch_norms: bool = False,
    embedding: Callable[[int, int], nn.Embedding] = nn.Embedding,
) -> TransformerDecoder:
    """Stack ``num_layers`` pre-norm blocks of ``make_attention(i)`` + a gated MLP.

    The family record (``models.family``) chooses the parts: Qwen3 and Llama use torchtune's
    RMSNorm, SwiGLU and a plain embedding; Gemma 3 uses (1 + w) RMSNorms, GeGLU (tanh GELU),
    an embedding scaled by sqrt(width) and a second norm on each branch's output
    (``post_branch_norms``: torchtune's ``sa_scale``/``mlp_scale``, HF's
    ``post_attention_layernorm``/``post_feedforward_layernorm``).

    Args:
        make_attention (Callable[[int], nn.Module]): builds layer ``i``'s attention module
            (layers may differ: Gemma 3's sliding and global layers).
        vocab_size (int): number of tokens.
        num_layers (int): decoder layers.
        num_heads (int): query heads (for torchtune's KV-cache set-up).
        embed_dim (int): model width.
        intermediate_dim (int): MLP width.
        max_seq_len (int): longest sequence.
        head_dim (int): per-head width.
        norm_eps (float): RMSNorm epsilon.
        tie_word_embeddings (bool): the output head shares the embedding matrix.
        make_norm (Callable[[int, float], nn.Module]): a norm of (width, eps).
        activation (Callable[[], nn.Module]): the MLP's gate activation.
        post_branch_norms (bool): normalise each branch's output before the residual add.
        embedding (Callable[[int, int], nn.Embedding]): the token embedding of (vocab, width).

    Returns:
        TransformerDecoder: the model (a ``Decoder``), randomly initialised.
    """
    layers = nn.ModuleList()
    for index in range(num_layers):
        mlp = FeedForward(
            gate_proj=nn.Linear(embed_dim, intermediate_dim, bias=False),
            down_proj=nn.Linear(intermediate_dim, embed_dim, bias=False),
            up_proj=nn.Linear(embed_dim, intermediate_dim, bias=False),
            activation=activation(),
        )
        post = (
            {
                "sa_scale": make_norm(embed_dim, norm_eps),
                "mlp_scale": make_norm(embed_dim, norm_eps),
            }
            if post_branch_norms
            else {}
        )
        layers.append(
            TransformerSelfAttentionLayer(
                attn=make_attention(index),
                mlp=mlp,
                sa_norm=make_norm(embed_dim, norm_eps),
                mlp_norm=make_norm(embed_dim, norm_eps),
                **post,
            )
        )
    tok_embeddings = embedding(vocab_size, embed_dim)
    output = (
        TiedLinear(tok_embeddings)
        if tie_word_embeddings
        else nn.Linear(embed_dim, vocab_size, bias=False)
    )
    return Decoder(
        tok_embeddings=tok_embeddings,
        layers=layers,
        max_seq_len=max_seq_len,
        num_heads=num_heads,
        head_dim=head_dim,
        norm=make_norm(embed_dim, norm_eps),
        output=output,
    )
