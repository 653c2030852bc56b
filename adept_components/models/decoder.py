"""The pre-norm SwiGLU decoder that Qwen3 and the Llama architecture share.

Qwen3 and Llama differ only inside attention (q/k norms, RoPE variant); the MLP, the block,
the norms, the embedding and the optionally tied head are the same torchtune modules. One
builder assembles them around whichever attention module a family supplies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torchtune.modules import (
    FeedForward,
    RMSNorm,
    TiedLinear,
    TransformerDecoder,
    TransformerSelfAttentionLayer,
)


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


def swiglu_decoder(
    make_attention: Callable[[], nn.Module],
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int,
    norm_eps: float,
    tie_word_embeddings: bool,
) -> TransformerDecoder:
    """Stack ``num_layers`` pre-norm blocks of ``make_attention()`` + SwiGLU MLP.

    Args:
        make_attention (Callable[[], nn.Module]): builds one layer's attention module.
        vocab_size (int): number of tokens.
        num_layers (int): decoder layers.
        num_heads (int): query heads (for torchtune's KV-cache set-up).
        embed_dim (int): model width.
        intermediate_dim (int): MLP width.
        max_seq_len (int): longest sequence.
        head_dim (int): per-head width.
        norm_eps (float): RMSNorm epsilon.
        tie_word_embeddings (bool): the output head shares the embedding matrix.

    Returns:
        TransformerDecoder: the model, randomly initialised.
    """
    layers = nn.ModuleList()
    for _ in range(num_layers):
        mlp = FeedForward(
            gate_proj=nn.Linear(embed_dim, intermediate_dim, bias=False),
            down_proj=nn.Linear(intermediate_dim, embed_dim, bias=False),
            up_proj=nn.Linear(embed_dim, intermediate_dim, bias=False),
        )
        layers.append(
            TransformerSelfAttentionLayer(
                attn=make_attention(),
                mlp=mlp,
                sa_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
                mlp_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
            )
        )
    tok_embeddings = nn.Embedding(vocab_size, embed_dim)
    output = (
        TiedLinear(tok_embeddings)
        if tie_word_embeddings
        else nn.Linear(embed_dim, vocab_size, bias=False)
    )
    return TransformerDecoder(
        tok_embeddings=tok_embeddings,
        layers=layers,
        max_seq_len=max_seq_len,
        num_heads=num_heads,
        head_dim=head_dim,
        norm=RMSNorm(embed_dim, eps=norm_eps),
        output=output,
    )
