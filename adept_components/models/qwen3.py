"""Qwen3 dense models as torchtune ``TransformerDecoder`` s.

torchtune 0.6.1 has no Qwen3. Its attention applies q/k norms after RoPE, Qwen3's before
(``attention.QKNormAttention`` fixes the order); everything else (RoPE, RMSNorm, SwiGLU MLP,
decoder) is torchtune's own.

Architecture numbers are those of the published Hugging Face ``config.json`` files
(``Qwen/Qwen3-{0.6B,1.7B,4B,8B,14B,32B}``); the ``-Base`` checkpoints share them.
"""

from __future__ import annotations

from torchtune.models.qwen2 import Qwen2RotaryPositionalEmbeddings
from torchtune.modules import RMSNorm, TransformerDecoder

from adept_components.models.attention import QKNormAttention
from adept_components.models.decoder import attention_layout, gated_mlp_decoder


class Qwen3Attention(QKNormAttention):
    """Qwen3's attention: q/k RMSNorm before RoPE, ``head_dim ** -0.5`` scores, no window."""


def qwen3(
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int = 128,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-6,
    rope_base: float = 1_000_000.0,
    tie_word_embeddings: bool = False,
) -> TransformerDecoder:
    """Build a Qwen3 dense decoder from architecture numbers.

    ``head_dim`` is free: Qwen3 uses 128 even where ``embed_dim / num_heads`` differs
    (0.6B: 1024 / 16 = 64), so q/k/v project to ``num_heads * head_dim`` and the output
    projection maps back to ``embed_dim``. Projections have no bias.

    Args:
        vocab_size (int): number of tokens.
        num_layers (int): number of decoder layers.
        num_heads (int): query heads.
        num_kv_heads (int): key/value heads (GQA); must divide ``num_heads``.
        embed_dim (int): model width (HF ``hidden_size``).
        intermediate_dim (int): SwiGLU hidden width (HF ``intermediate_size``).
        max_seq_len (int): longest sequence the RoPE cache covers.
        head_dim (int): per-head width (HF ``head_dim``).
        attn_dropout (float): attention dropout probability.
        norm_eps (float): RMSNorm epsilon (HF ``rms_norm_eps``).
        rope_base (float): RoPE theta (HF ``rope_theta``).
        tie_word_embeddings (bool): share the embedding matrix with the output head.

    Returns:
        TransformerDecoder: the model, randomly initialised.
    """
    rope = Qwen2RotaryPositionalEmbeddings(dim=head_dim, max_seq_len=max_seq_len, base=rope_base)

    def attention(_: int) -> Qwen3Attention:
        return Qwen3Attention(
            **attention_layout(embed_dim, num_heads, num_kv_heads, head_dim, max_seq_len),
            pos_embeddings=rope,
            q_norm=RMSNorm(dim=head_dim, eps=norm_eps),
            k_norm=RMSNorm(dim=head_dim, eps=norm_eps),
            attn_dropout=attn_dropout,
        )

    return gated_mlp_decoder(
        attention, vocab_size, num_layers, num_heads, embed_dim, intermediate_dim, max_seq_len,
        head_dim, norm_eps, tie_word_embeddings,
    )  # fmt: skip


# Published sizes. Columns: layers, heads, kv heads, embed dim, intermediate, tied embeddings.
# All share vocab 151,936, head_dim 128, rope theta 1e6, rms eps 1e-6 and 40,960 positions.
_QWEN3_SIZES: dict[str, tuple[int, int, int, int, int, bool]] = {
    "0.6b": (28, 16, 8, 1024, 3072, True),
    "1.7b": (28, 16, 8, 2048, 6144, True),
    "4b": (36, 32, 8, 2560, 9728, True),
    "8b": (36, 32, 8, 4096, 12288, False),
    "14b": (40, 40, 8, 5120, 17408, False),
    "32b": (64, 64, 8, 5120, 25600, False),
}


def _qwen3_size(size: str, max_seq_len: int) -> TransformerDecoder:
    num_layers, num_heads, num_kv_heads, embed_dim, intermediate_dim, tied = _QWEN3_SIZES[size]
    return qwen3(
        vocab_size=151_936,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        embed_dim=embed_dim,
        intermediate_dim=intermediate_dim,
        max_seq_len=max_seq_len,
        head_dim=128,
        norm_eps=1e-6,
        rope_base=1_000_000.0,
        tie_word_embeddings=tied,
    )


def qwen3_0_6b(max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-0.6B (HF ``Qwen/Qwen3-0.6B``): 28 layers, tied embeddings, 596M parameters."""
    return _qwen3_size("0.6b", max_seq_len)


def qwen3_1_7b(max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-1.7B (HF ``Qwen/Qwen3-1.7B``): 28 layers, tied embeddings, 1.72B parameters."""
    return _qwen3_size("1.7b", max_seq_len)


def qwen3_4b(max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-4B (HF ``Qwen/Qwen3-4B``): 36 layers, tied embeddings, 4.02B parameters."""
    return _qwen3_size("4b", max_seq_len)


def qwen3_8b(max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-8B (HF ``Qwen/Qwen3-8B``): 36 layers, untied, 8,190,735,360 parameters."""
    return _qwen3_size("8b", max_seq_len)


def qwen3_14b(max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-14B (HF ``Qwen/Qwen3-14B``): 40 layers, untied, 14.8B parameters."""
    return _qwen3_size("14b", max_seq_len)


def qwen3_32b(max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-32B (HF ``Qwen/Qwen3-32B``): 64 layers, untied, 32.8B parameters."""
    return _qwen3_size("32b", max_seq_len)
