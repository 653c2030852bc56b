"""Replay mixing: shares follow the weights, a total budget splits by weight, bad input is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from adept_components.data import epoch_order, mixed_text_dataset


class WordTokenizer:
    """One id per word (its length), then end-of-text: exact and fast."""

    eos_id = 0

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        return [len(word) for word in text.split()] + ([self.eos_id] if add_eos else [])


def corpus(path: Path, documents: int, words: int = 15) -> str:
    path.write_text("\n\n".join(" ".join(["word"] * words) for _ in range(documents)))
    return str(path)


def test_every_epoch_holds_the_weights_and_a_long_stream_within_one_percent(
    tmp_path: Path,
) -> None:
    domain = corpus(tmp_path / "domain.txt", 3000)  # 16 tokens per document: 3000 chunks of 16
    general = corpus(tmp_path / "general.txt", 1000)
    mix = mixed_text_dataset(
        WordTokenizer(),
        [{"source": domain, "weight": 0.9}, {"source": general, "weight": 0.1}],
        max_seq_len=16,
    )
    # 3000 domain chunks bound the mixture: 3333 chunks, 3000 + 333 (largest remainder).
    assert [s.chunks for s in mix.shares] == [3000, 333] and len(mix) == 3333
    assert [s.available for s in mix.shares] == [3000, 1000]
    assert mix.count_by_source(range(len(mix))) == [3000, 333]
    # The recipe's order (a seeded permutation per epoch): any long window keeps the shares.
    stream = [i for epoch in range(4) for i in epoch_order(len(mix), seed=7, epoch=epoch)]
    window = stream[1000:11000]
    general_share = mix.count_by_source(window)[1] / len(window)
    assert abs(general_share - 0.1) < 0.01, general_share
    assert mix[3000].tolist() == mix.parts[1][0].tolist()  # chunk 3000 is the general's first


def test_a_total_budget_is_split_by_the_weights(tmp_path: Path) -> None:
    domain = corpus(tmp_path / "domain.txt", 3000)
    general = corpus(tmp_path / "general.txt", 3000)
    mix = mixed_text_dataset(
        WordTokenizer(),
        [{"source": domain, "weight": 3}, {"source": general, "weight": 1}],
        max_seq_len=16,
        max_tokens=16 * 400,
    )
    assert [s.chunks for s in mix.shares] == [300, 100]
    assert [p.info.num_tokens for p in mix.parts] == [300 * 16, 100 * 16]
    own = mixed_text_dataset(  # a source's own budget wins over the split
        WordTokenizer(),
        [{"source": domain, "weight": 3}, {"source": general, "weight": 1, "max_tokens": 16 * 10}],
        max_seq_len=16,
        max_tokens=16 * 400,
    )
    assert [s.chunks for s in own.shares] == [30, 10]


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([], "dataset.sources must be a non-empty list"),
        ([{"source": "A", "weight": 0}, {"source": "B", "weight": 0}], "must sum to a positive"),
        ([{"source": "A", "weight": -1}], "dataset.sources[0].weight=-1 must be a non-negative"),
        ([{"source": "A", "wieght": 1}], "dataset.sources[0] has unknown keys ['wieght']"),
        ([{"weight": 1}], "dataset.sources[0] must be a mapping with a source"),
    ],
)
def test_bad_mixtures_are_named(sources: list, message: str) -> None:
    with pytest.raises(ValueError) as info:
        mixed_text_dataset(WordTokenizer(), sources, max_seq_len=16)
    assert message in str(info.value)


def test_a_source_without_text_is_named(tmp_path: Path) -> None:
    domain = corpus(tmp_path / "domain.txt", 100)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ValueError) as info:
        mixed_text_dataset(
            WordTokenizer(),
            [{"source": domain, "weight": 0.9}, {"source": str(empty), "weight": 0.1}],
            max_seq_len=16,
        )
    assert str(info.value).startswith("dataset.sources[1]: source ") and "gave 0 tokens" in str(
        info.value
    )
