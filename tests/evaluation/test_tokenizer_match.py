"""Tokenizer check between a base and an adapted checkpoint: what passes, what is refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from evaluation_fixtures import BASE

from adept_components.evaluation import check_same_tokenizer, tokenizer_file_digests


def copy_without_weights(dst: Path) -> Path:
    shutil.copytree(BASE, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


@pytest.fixture
def adapted(tmp_path: Path) -> Path:
    return copy_without_weights(tmp_path / "adapted")


def test_a_copy_matches(adapted: Path) -> None:
    check_same_tokenizer(BASE, adapted)
    assert set(tokenizer_file_digests(BASE)) == {"tokenizer.json", "vocab.json", "merges.txt"}
    assert tokenizer_file_digests(BASE) == tokenizer_file_digests(adapted)


def test_reserialised_tokenizer_json_still_matches(adapted: Path) -> None:
    """Key order, indentation and the merge spelling ("a b" or ["a", "b"]) do not count."""
    content = json.loads((adapted / "tokenizer.json").read_text())
    merges = content["model"]["merges"]
    flipped = [" ".join(m) if isinstance(m, list) else m.split(" ") for m in merges]
    assert flipped != merges
    content["model"]["merges"] = flipped
    (adapted / "tokenizer.json").write_text(json.dumps(dict(reversed(content.items())), indent=4))
    check_same_tokenizer(BASE, adapted)


def _swap_two_ids(d: Path) -> None:
    vocab = json.loads((d / "vocab.json").read_text())
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (d / "vocab.json").write_text(json.dumps(vocab))


def _set_vocab_size(d: Path) -> None:
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 64}))


def _remove_tokenizer(d: Path) -> None:
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (d / name).unlink()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_swap_two_ids, r"tokenizer mismatch: vocab\.json differs between"),
        (
            lambda d: (d / "merges.txt").write_text("#version: 0.2\n"),
            r"merges\.txt differs",
        ),
        (lambda d: (d / "merges.txt").unlink(), r"merges\.txt is in .*base_model but not in"),
        (lambda d: (d / "tokenizer.model").write_bytes(b"x"), r"tokenizer\.model is in .*adapted"),
        (_set_vocab_size, r"vocab_size=2048 in .* but 2112 in"),
        (_remove_tokenizer, r"adapted has no tokenizer files"),
        (lambda d: (d / "vocab.json").write_text("{"), r"vocab\.json is not valid JSON"),
    ],
)
def test_mismatches_are_named(adapted: Path, mutate: Callable[[Path], None], message: str) -> None:
    mutate(adapted)
    with pytest.raises(ValueError, match=message):
        check_same_tokenizer(BASE, adapted)
