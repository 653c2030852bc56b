"""Replay mixing: the domain corpus with general text mixed in, in fixed proportions.

Mixing general data into the domain data is the first defence against forgetting in continual
pretraining. ``mixed_text_dataset`` packs each source as ``packed_text_dataset`` does and lays
the sources' chunks side by side in one dataset whose share of chunks from each source is its
weight: with ``N`` chunks in all, source ``k`` contributes ``n_k`` chunks, the largest-remainder
rounding of ``N * w_k / sum(w)``, and ``N`` is as large as the sources allow without repeating
a chunk (the source that runs out first bounds it, as ``stopping_strategy="first_exhausted"``
does in ``datasets``). The recipe visits the dataset in a seeded permutation per epoch, so every
epoch holds exactly those proportions, any window of the stream holds them up to sampling
noise, and order, resume and ranks behave as for a single corpus: the position in the stream
decides the chunk.

A source larger than its share contributes its first ``n_k`` chunks; give it ``max_tokens`` to
read no more than that. ``max_tokens`` on the mixture splits one total budget by the weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from adept_components.data.encoder import Encoder
from adept_components.data.order import epoch_order
from adept_components.data.packed_text import CorpusInfo, PackedText, packed_text_dataset

_SOURCE_KEYS = {
    "source", "weight", "split", "text_column", "max_tokens", "streaming", "add_bos",
    "subset", "skip_documents",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class MixtureShare:
    """One source of a mixture.

    Attributes:
        source (str): the source's path or dataset id.
        weight (float): its weight as configured.
        share (float): its normalised weight, ``weight / sum(weights)``.
        chunks (int): chunks it contributes per epoch.
        available (int): chunks it holds.
    """

    source: str
    weight: float
    share: float
    chunks: int
    available: int


class MixedText(Dataset):
    """Chunks of several packed corpora, ``n_k`` from source ``k``, source after source.

    Args:
        parts (Sequence[PackedText]): the packed sources.
        shares (Sequence[MixtureShare]): how many chunks each contributes.
    """

    def __init__(self, parts: Sequence[PackedText], shares: Sequence[MixtureShare]) -> None:
        self.parts = list(parts)
        self.shares = list(shares)
        self.offsets = [0]
        for share in shares:
            self.offsets.append(self.offsets[-1] + share.chunks)
        seq_len = parts[0].info.max_seq_len
        self.info = CorpusInfo(
            source=" + ".join(f"{s.source} ({s.share:.0%})" for s in shares),
            num_documents=sum(p.info.num_documents for p in parts),
            num_tokens=self.offsets[-1] * seq_len,
            num_dropped_tokens=sum(
                p.info.num_dropped_tokens + (s.available - s.chunks) * seq_len
                for p, s in zip(parts, shares, strict=True)
            ),
            max_seq_len=seq_len,
        )

    def __len__(self) -> int:
        return self.offsets[-1]

    def source_of(self, index: int) -> int:
        """The source (position in ``shares``) of chunk ``index``."""
        for k in range(len(self.shares)):
            if index < self.offsets[k + 1]:
                return k
        raise IndexError(index)

    def __getitem__(self, index: int) -> torch.Tensor:
        k = self.source_of(index)
        return self.parts[k][index - self.offsets[k]]

    def count_by_source(self, indices: Iterable[int]) -> list[int]:
        """How many of ``indices`` come from each source."""
        counts = [0] * len(self.shares)
        for index in indices:
            counts[self.source_of(index)] += 1
        return counts

    def tokens_read(self, samples: int, seed: int) -> dict[str, int]:
        """Tokens per source in the first ``samples`` chunks of the training order.

        Args:
            samples (int): chunks read so far (steps x accumulation x ranks x batch).
            seed (int): the run's seed (``epoch_order``'s).

        Returns:
            dict[str, int]: source -> tokens.
        """
        n, counts = len(self), [0] * len(self.shares)
        for epoch in range(math.ceil(samples / n)):
            order = epoch_order(n, seed, epoch)[: samples - epoch * n]
            counts = [a + c for a, c in zip(counts, self.count_by_source(order), strict=True)]
        seq_len = self.info.max_seq_len
        return {s.source: c * seq_len for s, c in zip(self.shares, counts, strict=True)}


def mixed_text_dataset(
    tokenizer: Encoder,
    sources: Sequence[Mapping[str, Any]],
    max_seq_len: int,
    max_tokens: int | None = None,
    cache_dir: str | None = None,
    bos_leads_chunks: bool = False,
) -> MixedText:
    """Pack several corpora and mix them by weight (replay of general text, several domains).

    Args:
        tokenizer (Encoder): as for ``packed_text_dataset``.
        sources (Sequence[Mapping]): one entry per corpus: ``source`` and ``weight``, and any
            other argument of ``packed_text_dataset`` (``max_tokens``, ``split``,
            ``text_column``, ``skip_documents``, ...) for that corpus alone.
        max_seq_len (int): chunk length, shared.
        max_tokens (int | None): one total token budget, split by the weights (a source's own
            ``max_tokens`` wins); None: every source as large as its own settings say.
        cache_dir (str | None): token cache shared by the sources.
        bos_leads_chunks (bool): every chunk of every source starts with BOS
            (``packed_text_dataset``).

    Returns:
        MixedText: the mixture.

    Raises:
        ValueError: no sources, an unknown key, a weight that is not a non-negative number,
            weights that do not sum to a positive number, or a source without text; each
            message names ``dataset.sources[i]``.
    """
    if not isinstance(sources, Sequence) or isinstance(sources, str) or not sources:
        raise ValueError("dataset.sources must be a non-empty list of {source, weight} entries")
    weights = []
    for i, entry in enumerate(sources):
        field = f"dataset.sources[{i}]"
        if not isinstance(entry, Mapping) or "source" not in entry:
            raise ValueError(
                f"{field} must be a mapping with a source and a weight (on the command line: "
                "+dataset.sources='[{source: PATH, weight: 0.9}, ...]', a space after each colon)"
            )
        unknown = sorted(set(entry) - _SOURCE_KEYS)
        if unknown:
            raise ValueError(f"{field} has unknown keys {unknown}; known: {sorted(_SOURCE_KEYS)}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"{field}.weight={weight!r} must be a non-negative number")
        weights.append(float(weight))
    total = sum(weights)
    if not total > 0 or not math.isfinite(total):
        raise ValueError(
            f"dataset.sources weights {weights} must sum to a positive number (e.g. 0.9 and 0.1)"
        )
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < max_seq_len):
        raise ValueError(
            f"dataset.max_tokens={max_tokens!r} must be null or an integer >= max_seq_len"
        )
    parts = []
    for i, (entry, weight) in enumerate(zip(sources, weights, strict=True)):
        kwargs = {k: v for k, v in entry.items() if k not in ("source", "weight")}
        if max_tokens is not None and "max_tokens" not in kwargs and weight > 0:
            kwargs["max_tokens"] = max(max_seq_len, math.ceil(max_tokens * weight / total))
        try:
            parts.append(
                packed_text_dataset(
                    tokenizer,
                    str(entry["source"]),
                    max_seq_len,
                    cache_dir=cache_dir,
                    bos_leads_chunks=bos_leads_chunks,
                    **kwargs,
                )
            )
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"dataset.sources[{i}]: {e}") from None
    return MixedText(parts, _allocate(sources, weights, [len(p) for p in parts]))


def _allocate(
    sources: Sequence[Mapping[str, Any]], weights: list[float], available: list[int]
) -> list[MixtureShare]:
    """Chunks per source: the largest total whose shares no source runs out of."""
    total = sum(weights)
    shares = [w / total for w in weights]
    n = min(math.floor(a / s + 1e-9) for a, s in zip(available, shares, strict=True) if s > 0)
    exact = [n * s for s in shares]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(counts)), key=lambda k: exact[k] - counts[k], reverse=True)
    for k in by_remainder[: n - sum(counts)]:
        counts[k] += 1
    counts = [min(c, a) for c, a in zip(counts, available, strict=True)]
    return [
        MixtureShare(str(entry["source"]), w, s, c, a)
        for entry, w, s, c, a in zip(sources, weights, shares, counts, available, strict=True)
    ]
