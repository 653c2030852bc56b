"""An on-disk cache of a tokenized corpus, built once per machine and shared by its ranks.

Without it every rank of ``tune run --nproc_per_node 8`` streams and tokenizes the whole
token budget itself (8 downloads, 8 copies in memory: 1.2 GB each for 300M tokens), and every
resume does it again. With ``dataset.cache_dir`` the first process of each machine
(``LOCAL_RANK`` 0, or a single process) tokenizes and writes the stream; the others wait for it
and map the same file, so its pages are shared, not copied.

Layout: ``tokens-<key>.bin`` (the int32 token stream, raw) and ``tokens-<key>.json`` (what it
holds). ``key`` hashes everything that decides the stream: the dataset arguments and a
fingerprint of the tokenizer. Each file is written to a temporary name and renamed into place,
the JSON last: a cache entry exists only when it is complete, and a crash leaves at most a
temporary file that nothing reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from adept_components.atomic import atomic_write, write_text_atomically

FORMAT_VERSION = 1
# Encoded by every tokenizer to tell tokenizers apart: scripts, digits, whitespace runs, code.
_FINGERPRINT_TEXT = (
    "The quick brown fox jumps over the lazy dog. 0123456789 3.14159 x^2 + y_1 = 42;\n\t  "
    "def f(a, b):\n    return a ** b  # comment\nÀ la façon de Gödel — naïve café. "
    "中文分词测试 日本語のテキスト 한국어 문장 العربية ελληνικά русский हिन्दी 🙂👍\n\n"
)


def tokenizer_cache_key(tokenizer: Any) -> str:
    """The tokenizer's part of the cache key: a digest that differs when tokenization would.

    It covers the tokenizer's class, special ids, its encoding of a multilingual sample and,
    where the tokenizer exposes them, its vocabulary and merges (torchtune's BPE tokenizers) or
    the hash of its whole file (``hf_tokenizer``).

    Args:
        tokenizer (Any): a torchtune tokenizer (``encode(text, add_bos, add_eos)``).

    Returns:
        str: hex digest.
    """
    digest = hashlib.sha256()
    digest.update(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    for name in ("bos_id", "eos_id", "pad_id", "vocab_size", "content_hash"):
        digest.update(f"{name}={getattr(tokenizer, name, None)}".encode())
    sample = tokenizer.encode(_FINGERPRINT_TEXT, add_bos=True, add_eos=True)
    digest.update(json.dumps(list(sample)).encode())
    for name in ("encoder", "bpe_ranks", "special_tokens"):
        table = getattr(tokenizer, name, None)
        if isinstance(table, dict):
            digest.update(json.dumps(sorted((str(k), str(v)) for k, v in table.items())).encode())
    return digest.hexdigest()


def cached_token_stream(
    cache_dir: str,
    fields: dict[str, Any],
    tokenizer: Any,
    build: Callable[[], tuple[torch.Tensor, int]],
    poll_seconds: float = 2.0,
) -> tuple[torch.Tensor, int]:
    """The token stream for ``fields``, from ``cache_dir`` or built and written there.

    Args:
        cache_dir (str): directory of the cache (created if missing).
        fields (dict[str, Any]): the dataset arguments that decide the stream (JSON-able).
        tokenizer (Any): the tokenizer (fingerprinted into the key).
        build (Callable[[], tuple[torch.Tensor, int]]): tokenizes the corpus; returns the
            int32 stream and the number of documents read.
        poll_seconds (float): how often a waiting rank looks for the finished entry.

    Returns:
        tuple[torch.Tensor, int]: the 1-D int32 stream (memory-mapped, read-only in
        practice) and the number of documents.

    Raises:
        ValueError: a cache entry whose token file does not match its description.
    """
    content = {"format_version": FORMAT_VERSION, "fields": fields}
    content["tokenizer"] = tokenizer_cache_key(tokenizer)
    key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]
    directory = Path(cache_dir).expanduser()
    tokens_path, meta_path = directory / f"tokens-{key}.bin", directory / f"tokens-{key}.json"
    if not meta_path.is_file():
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            stream, documents = build()
            directory.mkdir(parents=True, exist_ok=True)
            data = memoryview(stream.contiguous().numpy())
            atomic_write(tokens_path, lambda tmp: tmp.write_bytes(data))
            meta = {**content, "num_tokens": int(stream.numel()), "num_documents": documents}
            write_text_atomically(meta_path, json.dumps(meta, indent=2))
        else:  # torchrun stops every rank if the one building fails, so no timeout is needed
            while not meta_path.is_file():
                time.sleep(poll_seconds)
    meta = json.loads(meta_path.read_text())
    num_tokens = meta["num_tokens"]
    if not tokens_path.is_file() or tokens_path.stat().st_size != 4 * num_tokens:
        raise ValueError(
            f"dataset cache entry {meta_path} does not match its token file {tokens_path}: "
            "delete both and run again"
        )
    if num_tokens == 0:
        return torch.empty(0, dtype=torch.int32), meta["num_documents"]
    stream = torch.from_file(str(tokens_path), shared=False, size=num_tokens, dtype=torch.int32)
    return stream, meta["num_documents"]
