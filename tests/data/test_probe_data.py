"""S1.1 probe data: file formats, instruction masking, padding and readable errors.

A byte-level BPE is trained locally (``conftest.write_qwen_tokenizer``) and loaded with the
package's ``qwen3_tokenizer``; expected ids come from that tokenizer's own ``encode``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_TEXT, write_qwen_tokenizer

from adept_components.data import ProbeData, probe_batches, probe_dataset, probe_mixture
from adept_components.models.tokenizers import qwen3_tokenizer

IGNORE = -100
ROWS = [
    {"text": "The quick brown fox jumps over the lazy dog.", "id": 0},
    {"text": "Continual pretraining adapts a language model.", "id": 1},
    {"text": "Let x be a real number such that x^2 = 4.", "id": 2},
]
INSTRUCTIONS = [
    {"instruction": "Name a colour", "input": "", "output": "Blue is a colour."},
    {"instruction": "Add the numbers", "input": "2 and 3", "output": "The sum is 5."},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tok")
    write_qwen_tokenizer(directory, [SAMPLE_TEXT * 3, *(r["text"] for r in ROWS)] * 10)
    return qwen3_tokenizer(str(directory))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_txt_file_gives_one_sample_per_paragraph(tokenizer, tmp_path: Path) -> None:
    paragraphs = ["First paragraph,\nstill the first.", "Second one.", "Third: x^2 = 4."]
    source = tmp_path / "probe.txt"
    source.write_text(f"\n\n{paragraphs[0]}\n\n{paragraphs[1]}\n  \t\n\n{paragraphs[2]}\n")

    data = probe_dataset(tokenizer, str(source), num_samples=10, max_seq_len=512)

    assert len(data.samples) == 3
    for sample, text in zip(data.samples, paragraphs, strict=True):
        expected = tokenizer.encode(text, add_bos=True, add_eos=True)
        assert sample.tokens == expected and sample.labels == expected
        assert sample.tokens[-1] == tokenizer.eos_id
    assert data.pad_id == tokenizer.pad_id
    info = data.info
    assert (info.kind, info.num_samples, info.num_skipped, info.max_seq_len) == ("text", 3, 0, 512)
    assert info.num_tokens == sum(len(s.tokens) - 1 for s in data.samples)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_column_files_read_with_datasets(tokenizer, tmp_path: Path, suffix: str) -> None:
    import datasets

    rows = [{"body": r["text"], "id": r["id"]} for r in ROWS]
    source = tmp_path / f"probe{suffix}"
    if suffix == ".jsonl":
        _write_jsonl(source, rows)
    elif suffix == ".json":
        source.write_text(json.dumps(rows))
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(source))

    data = probe_dataset(tokenizer, str(source), text_column="body", num_samples=2)

    assert [s.tokens for s in data.samples] == [
        tokenizer.encode(r["body"], add_bos=True, add_eos=True) for r in rows[:2]
    ]
    assert data.info.num_samples == 2


def test_dataset_directory_goes_through_load_dataset_split(tokenizer, tmp_path: Path) -> None:
    directory = tmp_path / "general"
    directory.mkdir()
    _write_jsonl(directory / "train.jsonl", ROWS)
    _write_jsonl(directory / "validation.jsonl", ROWS[:1])

    train = probe_dataset(tokenizer, str(directory), split="train")
    validation = probe_dataset(tokenizer, str(directory), split="validation")

    assert len(train.samples) == 3 and len(validation.samples) == 1
    assert validation.info.split == "validation"


def test_truncation_and_skipped_empty_rows(tokenizer, tmp_path: Path) -> None:
    rows = [{"text": ""}, {"text": None}, *ROWS]
    source = _write_jsonl(tmp_path / "probe.jsonl", rows)

    data = probe_dataset(tokenizer, str(source), num_samples=2, max_seq_len=6)

    assert data.info.num_skipped == 2
    assert [s.tokens for s in data.samples] == [
        tokenizer.encode(r["text"], add_bos=True, add_eos=True)[:6] for r in ROWS[:2]
    ]
    assert data.info.num_tokens == 2 * 5  # 6 tokens each; the first is never predicted


def test_shuffle_with_seed_is_deterministic_and_changes_order(tokenizer, tmp_path: Path) -> None:
    rows = [{"text": f"sample number {i} of the probe"} for i in range(20)]
    source = _write_jsonl(tmp_path / "probe.jsonl", rows)

    first = probe_dataset(tokenizer, str(source), seed=3)
    again = probe_dataset(tokenizer, str(source), seed=3)
    ordered = probe_dataset(tokenizer, str(source))

    assert first.samples == again.samples
    assert first.samples != ordered.samples
    assert sorted(map(tuple, (s.tokens for s in first.samples))) == sorted(
        map(tuple, (s.tokens for s in ordered.samples))
    )


def test_instruction_loss_is_masked_on_the_prompt(tokenizer, tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "sft.jsonl", INSTRUCTIONS)

    data = probe_dataset(tokenizer, str(source), kind="instruction")

    for sample, row in zip(data.samples, INSTRUCTIONS, strict=True):
        instruction = row["instruction"] + (f"\n{row['input']}" if row["input"] else "")
        prompt = tokenizer.encode(f"User: {instruction}\nAssistant:", add_bos=True, add_eos=False)
        answer = tokenizer.encode(f" {row['output']}", add_bos=False, add_eos=True)
        whole = tokenizer.encode(
            f"User: {instruction}\nAssistant: {row['output']}", add_bos=True, add_eos=True
        )
        assert sample.tokens == prompt + answer == whole  # exact prompt/answer boundary
        assert sample.labels == [IGNORE] * len(prompt) + answer
        assert sample.num_supervised == len(answer)
    assert data.info.num_tokens == sum(s.num_supervised for s in data.samples)


def test_changing_the_prompt_changes_no_supervised_label(tokenizer, tmp_path: Path) -> None:
    rows = [
        {"instruction": "Name a colour", "output": "Blue is a colour."},
        {"instruction": "Name a fox", "output": "Blue is a colour."},
    ]
    source = _write_jsonl(tmp_path / "sft.jsonl", rows)

    first, second = probe_dataset(tokenizer, str(source), kind="instruction").samples

    assert first.tokens != second.tokens
    supervised = [[t for t in s.labels if t != IGNORE] for s in (first, second)]
    assert supervised[0] == supervised[1]
    assert first.num_supervised == second.num_supervised == len(supervised[0])


def test_batches_are_right_padded_with_ignored_labels(tokenizer, tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "probe.jsonl", ROWS)
    data = probe_dataset(tokenizer, str(source))

    batches = probe_batches(data, batch_size=2)

    assert [t.shape[0] for t, _ in batches] == [2, 1]
    lengths = [len(s.tokens) for s in data.samples]
    tokens, labels = batches[0]
    assert tokens.shape == labels.shape == (2, max(lengths[:2]))
    assert tokens.dtype == labels.dtype == torch.long
    for row, sample in enumerate(data.samples[:2]):
        n = len(sample.tokens)
        assert tokens[row, :n].tolist() == sample.tokens
        assert labels[row, :n].tolist() == sample.labels
        assert (tokens[row, n:] == data.pad_id).all() and (labels[row, n:] == IGNORE).all()
    assert batches[1][0].shape == (1, lengths[2])  # each batch padded to its own longest
    assert sum(int((lab[:, 1:] != IGNORE).sum()) for _, lab in batches) == data.info.num_tokens


def test_missing_file_raises(tokenizer, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        probe_dataset(tokenizer, str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, "num_samples=0"),
        ({"kind": "chat"}, "kind='chat'"),
        ({"max_seq_len": 1}, "max_seq_len=1"),
        ({"text_column": "body"}, "text_column='body'"),
    ],
)
def test_bad_arguments_name_the_field(tokenizer, tmp_path: Path, kwargs: dict, match: str) -> None:
    source = _write_jsonl(tmp_path / "probe.jsonl", ROWS)
    with pytest.raises(ValueError, match=match):
        probe_dataset(tokenizer, str(source), **kwargs)


def test_missing_instruction_column_is_named(tokenizer, tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "output": "b"}])
    with pytest.raises(ValueError, match="instruction_column='instruction'.*prompt"):
        probe_dataset(tokenizer, str(source), kind="instruction")


def test_empty_and_all_empty_sources_raise(tokenizer, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(ValueError, match="gave no rows"):
        probe_dataset(tokenizer, str(empty))
    blank = _write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": "   "}])
    with pytest.raises(ValueError, match="2 rows, all empty or fully masked"):
        probe_dataset(tokenizer, str(blank))


def test_all_masked_instructions_raise(tokenizer, tmp_path: Path) -> None:
    # The prompt alone is longer than max_seq_len: truncation leaves no answer token.
    rows = [{"instruction": "Name a colour " * 10, "output": "Blue."}] * 3
    source = _write_jsonl(tmp_path / "sft.jsonl", rows)
    with pytest.raises(ValueError, match="3 rows, all empty or fully masked"):
        probe_dataset(tokenizer, str(source), kind="instruction", max_seq_len=8)


def test_txt_cannot_hold_instructions_and_unknown_suffix_is_refused(
    tokenizer, tmp_path: Path
) -> None:
    text = tmp_path / "probe.txt"
    text.write_text("hello there")
    with pytest.raises(ValueError, match="kind='instruction' needs columns"):
        probe_dataset(tokenizer, str(text), kind="instruction")
    csv = tmp_path / "probe.csv"
    csv.write_text("text\nhello\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        probe_dataset(tokenizer, str(csv))


def test_probe_batches_validates(tokenizer, tmp_path: Path) -> None:
    data = probe_dataset(tokenizer, str(_write_jsonl(tmp_path / "p.jsonl", ROWS)))
    with pytest.raises(ValueError, match="batch_size=0"):
        probe_batches(data, 0)
    with pytest.raises(ValueError, match="no samples"):
        probe_batches(ProbeData(samples=[], pad_id=0, info=data.info), 2)


def test_mixture_holds_both_kinds_of_s1_1(tokenizer, tmp_path: Path) -> None:
    text = _write_jsonl(tmp_path / "text.jsonl", ROWS)
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", INSTRUCTIONS)
    parts = [
        {"source": str(text), "kind": "text", "num_samples": 2},
        {"source": str(pairs), "kind": "instruction", "num_samples": 5},
    ]
    mixed = probe_mixture(tokenizer, parts, max_seq_len=64)
    alone = [probe_dataset(tokenizer, max_seq_len=64, **part) for part in parts]
    assert mixed.samples == alone[0].samples + alone[1].samples  # text first, then pairs
    assert [s.labels[0] == IGNORE for s in mixed.samples] == [False, False, True, True]
    info = mixed.info
    assert info.source == f"{text} + {pairs}" and info.kind == "text + instruction"
    assert (info.num_samples, info.max_seq_len) == (4, 64)
    assert info.num_tokens == alone[0].info.num_tokens + alone[1].info.num_tokens
    assert mixed.pad_id == alone[0].pad_id


@pytest.mark.parametrize(
    "parts, match",
    [
        ([], "non-empty list"),
        ({"source": "x"}, "non-empty list"),
        (["x"], r"parts\[0\] must be a mapping"),
        (
            [{"source": "TEXT"}, {"source": "TEXT", "max_seq_len": 8}],
            r"parts\[1\] sets 'max_seq_len'",
        ),
        ([{"source": "TEXT", "kind": "code"}], r"parts\[0\]: probe kind='code'"),
        ([{"source": "TEXT", "colour": "blue"}], r"parts\[0\]: .*colour"),
    ],
)
def test_mixture_errors_name_the_part(tokenizer, tmp_path: Path, parts, match: str) -> None:
    text = str(_write_jsonl(tmp_path / "text.jsonl", ROWS))
    if isinstance(parts, list):
        parts = [
            {k: text if v == "TEXT" else v for k, v in p.items()} if isinstance(p, dict) else p
            for p in parts
        ]
    with pytest.raises(ValueError, match=match):
        probe_mixture(tokenizer, parts)
