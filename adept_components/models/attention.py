"""Grouped-query attention with per-head q/k RMSNorm applied before RoPE (Qwen3 and Gemma 3).

torchtune 0.6.1's ``MultiHeadAttention`` accepts ``q_norm``/``k_norm`` but applies them *after*
rotary embeddings, while Qwen3 and Gemma 3 RMS-normalise each query and key head *before* RoPE;
built on the stock module, Qwen3's logits drift ~11% from the reference. ``QKNormAttention``
fixes the order. Gemma 3 adds two things a layer may ask for: the score scale
``query_pre_attn_scalar ** -0.5`` instead of ``head_dim ** -0.5``, and a sliding window (a
query attends to itself and the ``sliding_window - 1`` positions before it, as transformers'
``sliding_window_overlay`` masks it).

Construction, KV-cache set-up and torchtune's attention kernel are inherited from
``MultiHeadAttention``, so the module behaves like any torchtune attention for FSDP,
activation checkpointing and generation. Each family subclasses it (``Qwen3Attention``,
``Gemma3Attention``), which is how ``architecture_of`` tells the families apart.
"""

from __future__ import annotations

import torch
from torch import nn
from torchtune.modules import MultiHeadAttention

from adept_components._torchtune import MaskType


class QKNormAttention(MultiHeadAttention):
    """``MultiHeadAttention`` with q/k norms before RoPE, a free score scale and a window.

    Args:
        scale (float | None): attention score scale; None is ``head_dim ** -0.5`` (torchtune's
            kernel). Gemma 3: ``query_pre_attn_scalar ** -0.5``.
        sliding_window (int | None): a query at position ``i`` sees keys ``j`` with
            ``i - sliding_window < j <= i``; None: every earlier key (global attention).
        **kwargs: ``MultiHeadAttention``'s arguments (projections, norms, RoPE, sizes).

    Raises:
        ValueError: ``sliding_window`` is not a positive integer.
    """

    def __init__(
        self, *, scale: float | None = None, sliding_window: int | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if sliding_window is not None and (
            not isinstance(sliding_window, int) or sliding_window < 1
        ):
            raise ValueError(f"sliding_window={sliding_window!r} must be a positive integer")
        self.scale = scale
        self.sliding_window = sliding_window

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        mask: MaskType | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Self-attention over ``x`` (``y`` is accepted for API parity and must equal ``x``
        or be None while decoding from the KV cache).

        Args:
            x (torch.Tensor): input, shape [b, s, d].
            y (torch.Tensor | None): key/value input, shape [b, s, d]; None reads the KV cache.
            mask (MaskType | None): boolean mask [b, s, s] or a flex-attention BlockMask.
            input_pos (torch.Tensor | None): position ids [b, s]; None means 0..s-1.

        Returns:
            torch.Tensor: output, shape [b, s, d].

        Raises:
            NotImplementedError: a windowed or rescaled layer given a flex-attention BlockMask,
                or asked to decode from a KV cache.
        """
        b, s_x, _ = x.shape
        q = self.q_proj(x).view(b, s_x, self.num_heads, self.head_dim)  # [b, s, n_h, h_d]
        q = self.q_norm(q)
        q = self.pos_embeddings(q, input_pos=input_pos).transpose(1, 2)  # [b, n_h, s, h_d]

        if y is None:
            if self.kv_cache is None or not self.cache_enabled:
                raise ValueError(
                    "Must provide y input or use kv_cache to enable streaming decoding"
                )
            k, v = self.kv_cache.k_cache, self.kv_cache.v_cache
        else:
            s_y = y.shape[1]
            k = self.k_proj(y).view(b, s_y, self.num_kv_heads, self.head_dim)
            v = self.v_proj(y).view(b, s_y, self.num_kv_heads, self.head_dim)
            k = self.pos_embeddings(self.k_norm(k), input_pos=input_pos)
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [b, n_kv, s, h_d]
            if self.kv_cache is not None and self.cache_enabled:
                k, v = self.kv_cache.update(k, v)

        if self.num_heads != self.num_kv_heads:
            q_per_kv = self.num_heads // self.num_kv_heads
            expand_shape = (b, self.num_kv_heads, q_per_kv, -1, self.head_dim)
            k = k.unsqueeze(2).expand(expand_shape).flatten(1, 2)  # [b, n_h, s, h_d]
            v = v.unsqueeze(2).expand(expand_shape).flatten(1, 2)

        dropout = self.attn_dropout if self.training else 0.0
        if self.scale is None and self.sliding_window is None:
            out = self._attention_call(
                q,
                k,
                v,
                mask=mask,
                dropout_p=dropout,
                is_causal=self.kv_cache is None and mask is None and self.is_causal,
            )
        else:
            out = self._scaled_windowed_attention(q, k, v, mask, dropout)
        out = out.transpose(1, 2).contiguous().view(b, s_x, -1)  # [b, s, n_h * h_d]
        return self.output_proj(out)

    def _scaled_windowed_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: MaskType | None,
        dropout: float,
    ) -> torch.Tensor:
        """SDPA with this layer's scale and window; q, k, v are [b, n_h, s, h_d]."""
        if self.kv_cache is not None and self.cache_enabled:
            raise NotImplementedError(
                "KV-cache decoding is not implemented for windowed or rescaled attention"
            )
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise NotImplementedError(
                "a flex-attention BlockMask is not supported by windowed or rescaled attention"
            )
        s_q, s_k = q.shape[2], k.shape[2]
        window = None  # [s, s]: causal and within the window
        if self.sliding_window is not None and s_k > self.sliding_window:
            query = torch.arange(s_q, device=q.device)[:, None]
            key = torch.arange(s_k, device=q.device)[None, :]
            window = (key <= query) & (key > query - self.sliding_window)
        if mask is None and window is None:
            return nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, is_causal=self.is_causal, scale=self.scale
            )
        if mask is None:
            allowed = window
        else:
            allowed = mask[:, None, :, :] if window is None else mask[:, None, :, :] & window
        return nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=dropout, scale=self.scale
        )
