"""Gemma 3 text decoders (``gemma3_text``) as torchtune ``TransformerDecoder`` s.

torchtune 0.6.1 has Gemma and Gemma 2, not Gemma 3. What Gemma 3 adds, and where it lives:

- q/k RMSNorm per head *before* RoPE, scores scaled by ``query_pre_attn_scalar ** -0.5``,
  no attention softcapping: ``Gemma3Attention`` (``attention.QKNormAttention``).
- per-layer attention kinds (``layer_types``): ``sliding_attention`` layers see the last
  ``sliding_window`` positions with RoPE base ``rope_local_base_freq`` (1e4);
  ``full_attention`` layers see everything with ``rope_theta`` (1e6), optionally with linear
  RoPE scaling (Gemma 3 4B and up).
- four (1 + w) RMSNorms per layer computed in fp32 (input, post-attention, pre-feedforward,
  post-feedforward; torchtune's ``GemmaRMSNorm`` as ``sa_norm``, ``sa_scale``, ``mlp_norm``,
  ``mlp_scale``), GeGLU with the tanh GELU, embeddings scaled by sqrt(hidden) and a tied head
  (torchtune's Gemma modules).

RoPE is HF's rotate-half layout, so checkpoint tensors map one to one.

Architecture numbers of the model builders are those of the published ``config.json`` files
(``google/gemma-3-270m``, ``google/gemma-3-1b-pt``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn
from torchtune.models.gemma.gemma_norm_embedding import GemmaNormEmbeddings
from torchtune.models.gemma.rms_norm import GemmaRMSNorm
from torchtune.models.qwen2 import Qwen2RotaryPositionalEmbeddings
from torchtune.modules import TransformerDecoder

from adept_components.models.attention import QKNormAttention
from adept_components.models.decoder import attention_layout, gated_mlp_decoder

SLIDING, FULL = "sliding_attention", "full_attention"
LAYER_TYPES: tuple[str, ...] = (SLIDING, FULL)


class Gemma3Attention(QKNormAttention):
    """Gemma 3's attention: (1 + w) q/k norms before RoPE, its own scale, a window or none."""


@dataclasses.dataclass(frozen=True)
class LinearRopeScaling:
    """Linear RoPE scaling (HF ``rope_type: linear``): positions divided by ``factor``.

    Attributes:
        factor (float): how much the positions are compressed (8.0 in Gemma 3 4B and up).
    """

    factor: float

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise ValueError(f"rope_scaling.factor={self.factor} must be positive")


class LinearScaledRoPE(Qwen2RotaryPositionalEmbeddings):
    """Rotate-half RoPE whose frequencies are divided by ``factor`` (HF's ``linear`` type).

    Args:
        dim (int): per-head width.
        max_seq_len (int): cache length.
        base (float): RoPE theta.
        factor (float): the linear scaling factor.
    """

    def __init__(self, dim: int, max_seq_len: int, base: float, factor: float) -> None:
        self.factor = factor
        super().__init__(dim, max_seq_len=max_seq_len, base=base)

    def rope_init(self) -> None:
        super().rope_init()
        self.theta = self.theta / self.factor
        self.build_rope_cache(self.max_seq_len)


def check_layer_types(layer_types: Sequence[str], num_layers: int, field: str) -> tuple[str, ...]:
    """Refuse a ``layer_types`` list of the wrong length or with an unknown entry.

    Args:
        layer_types (Sequence[str]): one entry per layer.
        num_layers (int): the model's depth.
        field (str): what the caller calls the list, for the message.

    Returns:
        tuple[str, ...]: the list as a tuple.

    Raises:
        ValueError: wrong length or an entry other than ``sliding_attention``/``full_attention``.
    """
    if isinstance(layer_types, str) or not isinstance(layer_types, Sequence):
        raise ValueError(f"{field}={layer_types!r} must be a list of {num_layers} layer types")
    if len(layer_types) != num_layers:
        raise ValueError(
            f"{field} has {len(layer_types)} entries but the model has {num_layers} layers"
        )
    unknown = sorted({t for t in layer_types if t not in LAYER_TYPES}, key=str)
    if unknown:
        raise ValueError(
            f"{field} has unknown layer type(s) {unknown} (supported: {list(LAYER_TYPES)})"
        )
    return tuple(layer_types)


def gemma3(
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int,
    layer_types: Sequence[str],
    sliding_window: int,
    rope_base: float = 1_000_000.0,
    local_rope_base: float = 10_000.0,
    query_pre_attn_scalar: float | None = None,
    norm_eps: float = 1e-6,
    tie_word_embeddings: bool = True,
    rope_scaling: LinearRopeScaling | None = None,
) -> TransformerDecoder:
    """Build a Gemma 3 text decoder from architecture numbers.

    Args:
        vocab_size (int): number of tokens.
        num_layers (int): decoder layers.
        num_heads (int): query heads.
        num_kv_heads (int): key/value heads (a divisor of ``num_heads``).
        embed_dim (int): model width (HF ``hidden_size``).
        intermediate_dim (int): GeGLU hidden width.
        max_seq_len (int): RoPE cache length.
        head_dim (int): per-head width.
        layer_types (Sequence[str]): per layer, ``sliding_attention`` or ``full_attention``.
        sliding_window (int): positions a sliding layer sees (its own included).
        rope_base (float): RoPE theta of the full-attention layers (HF ``rope_theta``).
        local_rope_base (float): RoPE theta of the sliding layers (HF ``rope_local_base_freq``).
        query_pre_attn_scalar (float | None): scores are scaled by its ``** -0.5``; None
            means ``head_dim``.
        norm_eps (float): RMSNorm epsilon.
        tie_word_embeddings (bool): the output head shares the embedding matrix.
        rope_scaling (LinearRopeScaling | None): linear scaling of the full-attention layers'
            RoPE; None = plain.

    Returns:
        TransformerDecoder: the model, randomly initialised.

    Raises:
        ValueError: ``layer_types`` of the wrong length or with an unknown type, or
            ``num_heads`` not a multiple of ``num_kv_heads``.
    """
    layer_types = check_layer_types(layer_types, num_layers, "layer_types")
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_attention_heads={num_heads} must be a multiple of "
            f"num_key_value_heads={num_kv_heads}"
        )
    global_rope = (
        Qwen2RotaryPositionalEmbeddings(head_dim, max_seq_len=max_seq_len, base=rope_base)
        if rope_scaling is None
        else LinearScaledRoPE(head_dim, max_seq_len, rope_base, rope_scaling.factor)
    )
    local_rope = Qwen2RotaryPositionalEmbeddings(
        head_dim, max_seq_len=max_seq_len, base=local_rope_base
    )
    scale = (query_pre_attn_scalar or head_dim) ** -0.5

    def attention(index: int) -> Gemma3Attention:
        sliding = layer_types[index] == SLIDING
        return Gemma3Attention(
            **attention_layout(embed_dim, num_heads, num_kv_heads, head_dim, max_seq_len),
            pos_embeddings=local_rope if sliding else global_rope,
            q_norm=GemmaRMSNorm(head_dim, eps=norm_eps),
            k_norm=GemmaRMSNorm(head_dim, eps=norm_eps),
            scale=scale,
            sliding_window=sliding_window if sliding else None,
        )

    return gated_mlp_decoder(
        attention, vocab_size, num_layers, num_heads, embed_dim, intermediate_dim, max_seq_len,
        head_dim, norm_eps, tie_word_embeddings,
        make_norm=lambda dim, eps: GemmaRMSNorm(dim, eps=eps),
        activation=lambda: nn.GELU(approximate="tanh"),
        post_branch_norms=True,
        embedding=GemmaNormEmbeddings,
    )  # fmt: skip


def interleaved_layer_types(num_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Gemma 3's layout: every ``pattern``-th layer global, the others sliding (HF's default
    for ``sliding_window_pattern``)."""
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers))


def gemma3_270m(max_seq_len: int = 32_768) -> TransformerDecoder:
    """Gemma 3 270M (HF ``google/gemma-3-270m``): 18 layers, 268,098,176 parameters."""
    return gemma3(
        vocab_size=262_144, num_layers=18, num_heads=4, num_kv_heads=1, embed_dim=640,
        intermediate_dim=2048, max_seq_len=max_seq_len, head_dim=256,
        layer_types=interleaved_layer_types(18), sliding_window=512,
        query_pre_attn_scalar=256,
    )  # fmt: skip


def gemma3_1b(max_seq_len: int = 32_768) -> TransformerDecoder:
    """Gemma 3 1B (HF ``google/gemma-3-1b-pt``): 26 layers, 999,885,952 parameters."""
    return gemma3(
        vocab_size=262_144, num_layers=26, num_heads=4, num_kv_heads=1, embed_dim=1152,
        intermediate_dim=6912, max_seq_len=max_seq_len, head_dim=256,
        layer_types=interleaved_layer_types(26), sliding_window=512,
        query_pre_attn_scalar=256,
    )  # fmt: skip
