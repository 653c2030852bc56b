"""``dataset.cache_dir``: the tokenized corpus written once, reused exactly, keyed correctly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SAMPLE_TEXT, write_qwen_tokenizer

from adept_components.data import packed_text_dataset
from adept_components.data.token_cache import cached_token_stream, tokenizer_cache_key
from adept_components.models.tokenizers import qwen3_tokenizer

DEMO_MODEL = Path(__file__).resolve().parents[2] / "adept_components/assets/demo/base_model"


class CountingTokenizer:
    """Forwards to a real tokenizer and counts ``encode`` calls."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        self.calls += 1
        return self.inner.encode(text, add_bos=add_bos, add_eos=add_eos)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return qwen3_tokenizer(str(DEMO_MODEL))


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    path = tmp_path / "corpus.jsonl"
    docs = [f"Document {i}: the sum of the integrals. " * (i % 4 + 1) for i in range(60)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("tokens-*.json"))


def test_cache_hit_is_the_fresh_build_without_tokenizing(
    tokenizer: Any, corpus: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    fresh = packed_text_dataset(tokenizer, corpus, max_seq_len=32, skip_documents=3)
    first = CountingTokenizer(tokenizer)
    built = packed_text_dataset(first, corpus, max_seq_len=32, skip_documents=3, cache_dir=cache)
    assert first.calls == 57 + 1  # 57 documents + the fingerprint sample
    again = CountingTokenizer(tokenizer)
    cached = packed_text_dataset(again, corpus, max_seq_len=32, skip_documents=3, cache_dir=cache)
    assert again.calls == 1  # only the fingerprint: nothing tokenized
    for data in (built, cached):
        assert torch.equal(data.chunks, fresh.chunks) and data.info == fresh.info
        assert data[0].dtype == torch.int64
    assert len(_entries(cache)) == 1
    meta = json.loads(_entries(cache)[0].read_text())
    assert meta["num_tokens"] == fresh.info.num_tokens + fresh.info.num_dropped_tokens
    assert meta["num_documents"] == 57
    # Another chunk length reuses the same stream.
    other_len = packed_text_dataset(
        again, corpus, max_seq_len=48, skip_documents=3, cache_dir=cache
    )
    assert again.calls == 2 and len(_entries(cache)) == 1
    n = min(other_len.chunks.numel(), fresh.chunks.numel())  # the same stream, cut otherwise
    assert torch.equal(other_len.chunks.flatten()[:n], fresh.chunks.flatten()[:n])


def test_what_changes_the_stream_changes_the_key(
    tokenizer: Any, corpus: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    packed_text_dataset(tokenizer, corpus, max_seq_len=32, cache_dir=cache)
    packed_text_dataset(tokenizer, corpus, max_seq_len=32, max_tokens=64, cache_dir=cache)
    packed_text_dataset(tokenizer, corpus, max_seq_len=32, skip_documents=1, cache_dir=cache)
    assert len(_entries(cache)) == 3
    other_dir = tmp_path / "other_tokenizer"
    write_qwen_tokenizer(other_dir, [SAMPLE_TEXT] * 20)
    other = qwen3_tokenizer(str(other_dir))
    assert tokenizer_cache_key(other) != tokenizer_cache_key(tokenizer)
    assert tokenizer_cache_key(qwen3_tokenizer(str(DEMO_MODEL))) == tokenizer_cache_key(tokenizer)
    data = packed_text_dataset(other, corpus, max_seq_len=32, cache_dir=cache)
    assert len(_entries(cache)) == 4
    assert torch.equal(data.chunks, packed_text_dataset(other, corpus, max_seq_len=32).chunks)


def test_a_damaged_entry_is_refused(tokenizer: Any, corpus: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    packed_text_dataset(tokenizer, corpus, max_seq_len=32, cache_dir=cache)
    (token_file,) = cache.glob("tokens-*.bin")
    token_file.write_bytes(token_file.read_bytes()[:-4])
    with pytest.raises(ValueError, match="does not match its token file .* delete both"):
        packed_text_dataset(tokenizer, corpus, max_seq_len=32, cache_dir=cache)


def test_other_ranks_wait_for_the_first_and_never_build(tokenizer: Any, tmp_path: Path) -> None:
    """LOCAL_RANK 1 (another process) waits for the entry LOCAL_RANK 0 writes, then maps it."""
    cache, fields = tmp_path / "cache", {"source": "numbers"}
    stream = torch.arange(1000, dtype=torch.int32)
    code = (
        "import sys, torch\n"
        "from adept_components.data.token_cache import cached_token_stream\n"
        "from adept_components.models.tokenizers import qwen3_tokenizer\n"
        f"tok = qwen3_tokenizer({str(DEMO_MODEL)!r})\n"
        "def build():\n"
        "    raise SystemExit('a waiting rank built the cache')\n"
        f"s, docs = cached_token_stream({str(cache)!r}, {fields!r}, tok, build, poll_seconds=0.05)\n"
        "print(int(s.long().sum()), s.numel(), docs)\n"
    )
    waiter = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "LOCAL_RANK": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    assert waiter.poll() is None  # still waiting: nothing to read yet
    got, docs = cached_token_stream(str(cache), fields, tokenizer, lambda: (stream, 7))
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err[-2000:]
    assert out.split() == [str(int(stream.sum())), "1000", "7"]
    assert torch.equal(got, stream) and docs == 7


def test_the_first_rank_writes_atomically(tokenizer: Any, tmp_path: Path) -> None:
    """A build that fails leaves no entry (and no temporary file); the next run builds."""
    cache = tmp_path / "cache"

    def failing_build() -> tuple[torch.Tensor, int]:
        raise RuntimeError("hub connection lost")

    with pytest.raises(RuntimeError, match="hub connection lost"):
        cached_token_stream(str(cache), {"source": "x"}, tokenizer, failing_build)
    assert not cache.exists() or not any(cache.iterdir())
    done = threading.Event()

    def build() -> tuple[torch.Tensor, int]:
        done.set()
        return torch.arange(10, dtype=torch.int32), 1

    got, _ = cached_token_stream(str(cache), {"source": "x"}, tokenizer, build)
    assert done.is_set() and torch.equal(got, torch.arange(10, dtype=torch.int32))
    assert sorted(p.name.split(".")[-1] for p in cache.iterdir()) == ["bin", "json"]
