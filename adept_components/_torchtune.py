"""The one seam to torchtune's private API: every name taken from a private torchtune module.

torchtune is frozen at 0.6.1 (its last release). Its public API (``TransformerDecoder``,
``MultiHeadAttention``, the model builders, ``CEWithChunkedOutputLoss``) may be imported
anywhere; a name from a ``_``-prefixed module, or a ``_``-prefixed name, is imported here only.
The day torchtune is replaced or upgraded, this file is what has to be rewritten: each name
below says what it is used for, so its replacement is clear.

- ``Qwen2_5Tokenizer``, ``QWEN2_5_SPECIAL_TOKENS``: the byte-level BPE tokenizer of Qwen2.5 and
  Qwen3 (``vocab.json`` + ``merges.txt``) and its special tokens (``models.tokenizers.
  qwen3_tokenizer``).
- ``PRETOKENIZE_REGEX``: Qwen's pre-tokenizer split pattern, used to train byte-level BPE
  tokenizers that ``Qwen2_5Tokenizer`` reads id for id (the demo model and test tokenizers).
- ``QWEN2_FROM_HF``: torchtune's Qwen2 HF -> torchtune parameter-name table, the base of the
  Qwen3 table (``models.convert_weights``).
- ``LLAMA_FROM_HF``: the same table for Llama (``torchtune.models.convert_weights._FROM_HF``),
  inverted to name tensors the HF way in error messages.
- ``MaskType``: the type of an attention mask (a boolean tensor or a flex-attention
  ``BlockMask``) in ``Qwen3Attention.forward``'s signature.

Import only torchtune here: every ``adept_components`` module may import this one.
"""

from torchtune.models.convert_weights import _FROM_HF as LLAMA_FROM_HF
from torchtune.models.qwen2._convert_weights import _FROM_HF as QWEN2_FROM_HF
from torchtune.models.qwen2._tokenizer import PRETOKENIZE_REGEX
from torchtune.models.qwen2_5._tokenizer import QWEN2_5_SPECIAL_TOKENS, Qwen2_5Tokenizer
from torchtune.modules.attention_utils import _MaskType as MaskType

__all__ = [
    "LLAMA_FROM_HF",
    "PRETOKENIZE_REGEX",
    "QWEN2_5_SPECIAL_TOKENS",
    "QWEN2_FROM_HF",
    "MaskType",
    "Qwen2_5Tokenizer",
]
