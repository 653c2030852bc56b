"""S2.5 the domain corpus: packed next-token text, concatenated and then chunked.

Continual pretraining wants every token of the corpus. torchtune 0.6.1's
``text_completion_dataset`` truncates each document to ``max_seq_len`` *before* packing (and
drops its end-of-text token), which at short sequence lengths throws away up to half the corpus.
Here documents are tokenized, each closed with the end-of-text token, concatenated into one
stream and cut into equal ``max_seq_len`` chunks: nothing is lost but the last partial chunk,
and no chunk needs padding.

``max_tokens`` bounds how much of a corpus is read, so a billion-token dataset streamed from
the hub (``streaming=True``) is consumed only up to the run's token budget. ``cache_dir`` keeps
the tokenized stream on disk (``token_cache``): one process per machine tokenizes, the other
ranks and every resume map the file.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from adept_components.data.encoder import Encoder
from adept_components.data.sources import read_rows
from adept_components.data.token_cache import cached_token_stream


@dataclasses.dataclass(frozen=True)
class CorpusInfo:
    """What a packed corpus holds.

    Attributes:
        source (str): file path or dataset id.
        num_documents (int): documents read.
        num_tokens (int): tokens in the chunks (``len(dataset) * max_seq_len``).
        num_dropped_tokens (int): tokens of the final partial chunk, not used.
        max_seq_len (int): chunk length.
    """

    source: str
    num_documents: int
    num_tokens: int
    num_dropped_tokens: int
    max_seq_len: int


class PackedText(Dataset):
    """Equal-length token chunks; item ``i`` is a ``[max_seq_len]`` int64 tensor.

    Args:
        chunks (torch.Tensor): ``[n, max_seq_len]`` token ids.
        info (CorpusInfo): provenance and counts.
    """

    def __init__(self, chunks: torch.Tensor, info: CorpusInfo) -> None:
        self.chunks = chunks
        self.info = info

    def __len__(self) -> int:
        return self.chunks.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.chunks[index].long()


def packed_text_dataset(
    tokenizer: Encoder,
    source: str,
    max_seq_len: int,
    split: str = "train",
    text_column: str = "text",
    max_tokens: int | None = None,
    streaming: bool = False,
    add_bos: bool = True,
    subset: str | None = None,
    skip_documents: int = 0,
    cache_dir: str | None = None,
    bos_leads_chunks: bool = False,
) -> PackedText:
    """Tokenize a corpus, concatenate its documents and cut the stream into chunks.

    With ``bos_leads_chunks`` every chunk starts with the tokenizer's BOS, whatever
    position of a document it is cut at: Gemma needs ``<bos>`` at position 0 (without it
    held-out loss rises by 0.1-0.9 nats/token, and fine-tuning first learns to cope). A chunk
    is then BOS plus the next ``max_seq_len - 1`` tokens of a stream whose documents are
    separated by the end-of-text token alone (``add_bos`` is ignored): Gemma 3 270M gives
    ``<bos>`` after ``<eos>`` a probability of 3e-11, so a ``<bos>`` inside a chunk would be a
    24-nat label that training spends itself on.

    Args:
        tokenizer (Encoder): torchtune tokenizer (``encode(text, add_bos, add_eos)``); its
            end-of-text token separates documents.
        source (str): ``.txt`` (one document per paragraph), ``.jsonl``/``.json``/``.parquet``
            (one per row), a dataset directory or a Hugging Face dataset id.
        max_seq_len (int): chunk length in tokens.
        split (str): dataset split.
        text_column (str): column holding the text.
        max_tokens (int | None): stop reading once this many tokens are collected (the run's
            token budget); None reads everything.
        streaming (bool): stream a hub dataset instead of downloading it whole.
        add_bos (bool): start each document with the tokenizer's BOS (Llama has one; Qwen
            has none, so this is a no-op there).
        subset (str | None): dataset configuration name.
        skip_documents (int): documents to skip first, e.g. the ones a canary holds out.
        cache_dir (str | None): keep the tokenized stream here and reuse it (keyed by every
            argument above but ``max_seq_len``, and by the tokenizer); None tokenizes each time.
        bos_leads_chunks (bool): start every chunk with the tokenizer's BOS (the recipe sets
            it for families that need one, ``ModelFamily.leading_bos``).

    Returns:
        PackedText: the chunks.

    Raises:
        ValueError: bad ``max_seq_len``/``max_tokens``, a missing column, a corpus shorter
            than one chunk, or ``bos_leads_chunks`` with a tokenizer that has no BOS.
        FileNotFoundError: a missing file.
    """
    if not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise ValueError(f"dataset max_seq_len={max_seq_len!r} must be an integer >= 2")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < max_seq_len):
        raise ValueError(
            f"dataset max_tokens={max_tokens!r} must be null or an integer >= max_seq_len ({max_seq_len})"
        )
    if not isinstance(skip_documents, int) or skip_documents < 0:
        raise ValueError(
            f"dataset skip_documents={skip_documents!r} must be a non-negative integer"
        )
    bos_id = getattr(tokenizer, "bos_id", None)
    if bos_leads_chunks and not isinstance(bos_id, int):
        raise ValueError(
            "dataset bos_leads_chunks=True but the tokenizer has no BOS token: set "
            "tokenizer.bos_token (Gemma: <bos>)"
        )

    fields = {  # everything that decides the token stream (the cache key)
        "source": source,
        "split": split,
        "text_column": text_column,
        "max_tokens": max_tokens,
        "add_bos": add_bos and not bos_leads_chunks,
        "subset": subset,
        "skip_documents": skip_documents,
    }

    def tokenize() -> tuple[torch.Tensor, int]:
        return _tokenize(tokenizer, streaming=streaming, **fields)

    if cache_dir is None:
        stream, documents = tokenize()
    else:
        stream, documents = cached_token_stream(cache_dir, fields, tokenizer, tokenize)
    if bos_leads_chunks:
        chunks, used = _bos_led_chunks(stream, max_seq_len, bos_id)
    else:
        num_chunks = len(stream) // max_seq_len
        used = num_chunks * max_seq_len
        chunks = stream[:used].view(num_chunks, max_seq_len)
    if len(chunks) == 0:
        raise ValueError(
            f"source {source!r} gave {len(stream)} tokens, fewer than one chunk of "
            f"max_seq_len={max_seq_len}: use a larger corpus or a shorter max_seq_len"
        )
    info = CorpusInfo(source, documents, chunks.numel(), len(stream) - used, max_seq_len)
    return PackedText(chunks, info)


def _bos_led_chunks(
    stream: torch.Tensor, max_seq_len: int, bos_id: int
) -> tuple[torch.Tensor, int]:
    """Cut ``stream`` into ``[n, max_seq_len]`` chunks: BOS, then ``max_seq_len - 1`` tokens.

    Returns:
        tuple[torch.Tensor, int]: the chunks and how many stream tokens they used.
    """
    body = max_seq_len - 1
    num_chunks = len(stream) // body
    used = num_chunks * body
    lead = torch.full((num_chunks, 1), bos_id, dtype=stream.dtype)
    return torch.cat([lead, stream[:used].view(num_chunks, body)], dim=1), used


def _tokenize(
    tokenizer: Encoder,
    *,
    source: str,
    split: str,
    text_column: str,
    max_tokens: int | None,
    streaming: bool,
    add_bos: bool,
    subset: str | None,
    skip_documents: int,
) -> tuple[torch.Tensor, int]:
    """The corpus as one int32 token stream (documents closed by end-of-text) and its count."""
    stream = array("i")  # 4 bytes per token: a 300M-token budget is 1.2 GB, not a list of ints
    documents = 0
    rows = read_rows(source, split, streaming=streaming, field="source", subset=subset)
    for index, row in enumerate(rows):
        if index < skip_documents:
            continue
        text = _text(row, text_column, source)
        if not text.strip():
            continue
        stream.extend(tokenizer.encode(text, add_bos=add_bos, add_eos=True))
        documents += 1
        if max_tokens is not None and len(stream) >= max_tokens:
            del stream[max_tokens:]
            break
    if not stream:
        return torch.empty(0, dtype=torch.int32), documents
    return torch.frombuffer(stream, dtype=torch.int32).clone(), documents


def _text(row: Mapping[str, Any] | str, column: str, source: str) -> str:
    if isinstance(row, str):
        return row
    if column not in row:
        raise ValueError(
            f"dataset text_column={column!r} is not a column of {source!r} (columns: {sorted(row)})"
        )
    value = row[column]
    return value if isinstance(value, str) else ""
