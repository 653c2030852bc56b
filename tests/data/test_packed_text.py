"""Packed domain corpus: concatenate-then-chunk keeps every token but the last partial chunk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adept_components.data import packed_text_dataset
from adept_components.models.tokenizers import qwen3_tokenizer

DEMO_MODEL = Path(__file__).resolve().parents[2] / "adept_components/assets/demo/base_model"


@pytest.fixture(scope="module")
def tokenizer():
    return qwen3_tokenizer(str(DEMO_MODEL))


def _docs() -> list[str]:
    return [
        f"Document {i}: " + "the integral of a sum is the sum of the integrals. " * (i % 5 + 1)
        for i in range(40)
    ]


def test_stream_is_the_concatenation_of_documents(tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs()))
    data = packed_text_dataset(tokenizer, str(path), max_seq_len=32)
    expected = [t for d in _docs() for t in tokenizer.encode(d, add_bos=True, add_eos=True)]
    n = len(expected) // 32
    assert len(data) == n
    assert torch.equal(torch.cat([data[i] for i in range(n)]), torch.tensor(expected[: n * 32]))
    assert data.info.num_tokens + data.info.num_dropped_tokens == len(expected)
    assert data.info.num_dropped_tokens < 32 and data.info.num_documents == 40
    assert (
        torch.cat([data[i] for i in range(n)]) == tokenizer.eos_id
    ).sum() >= 39  # separators kept


def test_short_sequences_keep_almost_all_tokens(tokenizer, tmp_path: Path) -> None:
    """torchtune 0.6.1's text_completion_dataset keeps ~43% at 64 tokens; packing keeps ~all."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(_docs()))
    data = packed_text_dataset(tokenizer, str(path), max_seq_len=64)
    assert data.info.num_tokens / (data.info.num_tokens + data.info.num_dropped_tokens) > 0.98


def test_token_budget_stops_reading(tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(_docs()))
    data = packed_text_dataset(tokenizer, str(path), max_seq_len=16, max_tokens=100)
    assert data.info.num_tokens == 96 and len(data) == 6
    assert data.info.num_documents < 40


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"source": "missing.txt"},
            FileNotFoundError,
            "source='missing.txt' does not exist",
        ),
        ({"max_seq_len": 1}, ValueError, "max_seq_len=1"),
        ({"max_tokens": 4}, ValueError, "max_tokens=4"),
        ({"max_seq_len": 100_000}, ValueError, "fewer than one chunk"),
        ({"text_column": "body"}, ValueError, "text_column='body'"),
    ],
)
def test_bad_input(tokenizer, tmp_path: Path, kwargs: dict, error: type, message: str) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "short text"}) + "\n")
    args = {"source": str(path), "max_seq_len": 8, **kwargs}
    with pytest.raises(error, match=message):
        packed_text_dataset(tokenizer, **args)


def test_every_local_format_gives_the_same_tokens(tokenizer, tmp_path: Path) -> None:
    """.txt, .jsonl, .parquet and both kinds of save_to_disk directory: one token stream."""
    import datasets

    docs = [d.strip() for d in _docs()]  # a .txt paragraph is stripped
    rows = [{"text": d} for d in docs]
    (tmp_path / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "corpus.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved_dataset"))
    splits = {"train": rows, "validation": rows[:3]}
    datasets.DatasetDict(
        {k: datasets.Dataset.from_list(v) for k, v in splits.items()}
    ).save_to_disk(str(tmp_path / "saved_dict"))
    sources = ["corpus.txt", "corpus.jsonl", "corpus.parquet", "saved_dataset", "saved_dict"]
    streams = {}
    for name in sources:
        data = packed_text_dataset(tokenizer, str(tmp_path / name), max_seq_len=32)
        streams[name] = torch.cat([data[i] for i in range(len(data))])
    expected = [t for d in docs for t in tokenizer.encode(d, add_bos=True, add_eos=True)]
    for name, stream in streams.items():
        assert torch.equal(stream, torch.tensor(expected[: len(stream)])), name
        assert len(stream) == len(expected) // 32 * 32, name
    validation = packed_text_dataset(
        tokenizer, str(tmp_path / "saved_dict"), max_seq_len=8, split="validation"
    )
    assert validation.info.num_documents == 3
    with pytest.raises(ValueError, match="saved DatasetDict without split 'test'"):
        packed_text_dataset(tokenizer, str(tmp_path / "saved_dict"), max_seq_len=8, split="test")


def test_bos_leads_every_chunk(tmp_path: Path) -> None:
    """Gemma's convention: BOS at position 0 of every chunk, documents inside a chunk
    separated by end-of-text alone (no BOS label the model would have to learn)."""
    from adept_components.models.tokenizers import hf_tokenizer

    tokenizer = hf_tokenizer(str(DEMO_MODEL), bos_token="<|im_start|>")
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs()))
    data = packed_text_dataset(tokenizer, str(path), max_seq_len=32, bos_leads_chunks=True)
    stream = [t for d in _docs() for t in tokenizer.encode(d, add_bos=False, add_eos=True)]
    n = len(stream) // 31
    assert len(data) == n
    chunks = torch.stack([data[i] for i in range(n)])
    assert (chunks[:, 0] == tokenizer.bos_id).all()
    assert not (chunks[:, 1:] == tokenizer.bos_id).any()
    assert torch.equal(chunks[:, 1:].reshape(-1), torch.tensor(stream[: n * 31]))
    assert data.info.num_dropped_tokens == len(stream) - n * 31


def test_bos_leads_chunks_needs_a_bos(tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(_docs()))
    with pytest.raises(ValueError, match="tokenizer has no BOS token: set tokenizer.bos_token"):
        packed_text_dataset(tokenizer, str(path), max_seq_len=32, bos_leads_chunks=True)
