"""What the data builders need of a tokenizer: one ``encode`` method (S1.1 probe, S2.5 corpus).

torchtune's tokenizers (``Qwen2_5Tokenizer``, ``Llama3Tokenizer``) and ``hf_tokenizer`` all fit,
so a probe set and a corpus can be built with whichever tokenizer the config names.
"""

from __future__ import annotations

from typing import Protocol


class Encoder(Protocol):
    """A tokenizer as the probe and the packed corpus use it."""

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Token ids of ``text``, with BOS and EOS when asked (and the tokenizer has them)."""
        ...
