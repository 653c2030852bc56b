"""Llama-architecture decoders: a component builder for any checkpoint, and the Llama 3.x sizes.

torchtune 0.6.1's own Llama builders each fix part of the architecture: ``llama3`` cannot tie
the output head to the embedding, ``llama3_2`` always applies Llama 3 RoPE scaling, and both
hard-code the scaling's low/high frequency factors and original context (1, 4, 8192) and
``head_dim = embed_dim / num_heads``. Checkpoints of the Llama architecture vary in all of
these (SmolLM2: tied, unscaled RoPE; Llama 3.2: tied, scaled), so ``llama`` takes every knob as
an argument and assembles torchtune's own modules (attention, RoPE, SwiGLU MLP, RMSNorm) with
the decoder Qwen3 shares (``decoder.gated_mlp_decoder``).

The named model builders (``llama3_1_8b`` ...) are torchtune's, re-exported so configs can say
``adept_components.models.llama3_1_8b`` like every other model of this package.
"""

from __future__ import annotations

import dataclasses

from torch import nn
from torchtune.models.llama3_1 import Llama3ScaledRoPE, llama3_1_8b, llama3_1_70b
from torchtune.models.llama3_2 import llama3_2_1b, llama3_2_3b
from torchtune.modules import MultiHeadAttention, RotaryPositionalEmbeddings, TransformerDecoder

from adept_components.models.decoder import attention_layout, gated_mlp_decoder

__all__ = [
    "Llama3RopeScaling",
    "llama",
    "llama3_1_8b",
    "llama3_1_70b",
    "llama3_2_1b",
    "llama3_2_3b",
]


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3 RoPE frequency scaling (HF ``rope_scaling`` with ``rope_type: llama3``).

    Attributes:
        factor (float): how much the low frequencies are stretched.
        low_freq_factor (float): wavelengths above ``original / low_freq_factor`` are scaled.
        high_freq_factor (float): wavelengths below ``original / high_freq_factor`` are kept;
            those in between are interpolated.
        original_max_position_embeddings (int): the context length the model was
            pretrained with before scaling.
    """

    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise ValueError(f"rope_scaling.factor={self.factor} must be positive")
        if not 0 < self.low_freq_factor < self.high_freq_factor:
            raise ValueError(
                f"rope_scaling needs 0 < low_freq_factor < high_freq_factor, got "
                f"{self.low_freq_factor} and {self.high_freq_factor}"
            )
        if self.original_max_position_embeddings < 1:
            raise ValueError(
                "rope_scaling.original_max_position_embeddings="
                f"{self.original_max_position_embeddings} must be a positive integer"
            )


def llama(
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int | None = None,
    norm_eps: float = 1e-5,
    rope_base: float = 10_000.0,
    rope_scaling: Llama3RopeScaling | None = None,
    tie_word_embeddings: bool = False,
) -> TransformerDecoder:
    """Build a Llama-architecture decoder (grouped-query attention, SwiGLU, RMSNorm, RoPE).

    Args:
        vocab_size (int): number of tokens.
        num_layers (int): decoder layers.
        num_heads (int): query heads.
        num_kv_heads (int): key/value heads (a divisor of ``num_heads``).
        embed_dim (int): model width.
        intermediate_dim (int): MLP width.
        max_seq_len (int): RoPE cache length.
        head_dim (int | None): per-head width; default ``embed_dim // num_heads``.
        norm_eps (float): RMSNorm epsilon.
        rope_base (float): RoPE theta.
        rope_scaling (Llama3RopeScaling | None): Llama 3 frequency scaling; None = plain RoPE.
        tie_word_embeddings (bool): the output head shares the embedding matrix.

    Returns:
        TransformerDecoder: the model, randomly initialised.

    Raises:
        ValueError: ``num_heads`` is not a multiple of ``num_kv_heads``.
    """
    head_dim = head_dim or embed_dim // num_heads
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_attention_heads={num_heads} must be a multiple of "
            f"num_key_value_heads={num_kv_heads}"
        )
    if rope_scaling is None:
        rope: nn.Module = RotaryPositionalEmbeddings(head_dim, max_seq_len, base=rope_base)
    else:
        rope = Llama3ScaledRoPE(
            head_dim,
            max_seq_len,
            base=rope_base,
            scale_factor=rope_scaling.factor,
            low_freq_factor=rope_scaling.low_freq_factor,
            high_freq_factor=rope_scaling.high_freq_factor,
            old_context_len=rope_scaling.original_max_position_embeddings,
        )

    def attention(_: int) -> MultiHeadAttention:
        return MultiHeadAttention(
            **attention_layout(embed_dim, num_heads, num_kv_heads, head_dim, max_seq_len),
            pos_embeddings=rope,
        )

    return gated_mlp_decoder(
        attention, vocab_size, num_layers, num_heads, embed_dim, intermediate_dim, max_seq_len,
        head_dim, norm_eps, tie_word_embeddings,
    )  # fmt: skip
