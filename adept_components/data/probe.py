"""S1.1 probe data: the general-domain samples the layer and unit importance scores are measured on.

Two kinds of sample (spec S1.1):

- ``"text"``: plain text; the loss counts on every token.
- ``"instruction"``: an instruction/answer pair formatted as
  ``"User: {instruction}\\nAssistant: {output}"``; the loss counts on the answer only (the
  prompt's labels are ``CROSS_ENTROPY_IGNORE_IDX``).

Padding never counts: ``probe_batches`` right-pads each batch and gives pad positions the
ignore label, so a probe loss is a mean over real, supervised tokens only (the reference code
counted pads; spec "Reference code bugs").

Labels follow torchtune's convention: ``labels`` is as long as ``tokens`` and holds the id a
position *is* (or the ignore index); the loss compares the logits at position ``t`` with
``labels[t + 1]``. So ``labels[0]`` is never predicted and a sample needs at least one
supervised label after its first token to contribute.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.nn.utils.rnn import pad_sequence
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX

from adept_components.data.encoder import Encoder
from adept_components.data.sources import read_rows

logger = logging.getLogger(__name__)

ProbeKind = Literal["text", "instruction"]
_KINDS = ("text", "instruction")
# Local file suffix -> ``datasets`` builder name.


@dataclasses.dataclass(frozen=True)
class ProbeSample:
    """One tokenized probe sample.

    Attributes:
        tokens (list[int]): input ids, at most ``max_seq_len`` long.
        labels (list[int]): same length as ``tokens``: the token id where the loss counts,
            ``CROSS_ENTROPY_IGNORE_IDX`` (-100) where it does not (instruction prompts).
    """

    tokens: list[int]
    labels: list[int]

    @property
    def num_supervised(self) -> int:
        """Labels the loss counts: supervised positions after the first (never predicted)."""
        return sum(label != CROSS_ENTROPY_IGNORE_IDX for label in self.labels[1:])


@dataclasses.dataclass(frozen=True)
class ProbeSetInfo:
    """Where a probe set came from and how it was cut: the data identity of a layer profile.

    Attributes:
        source (str): the file path or Hugging Face dataset id.
        kind (str): ``"text"`` or ``"instruction"``.
        split (str): the dataset split read (a single local file is always one split).
        num_samples (int): samples kept.
        max_seq_len (int): truncation length.
        num_tokens (int): supervised tokens over all samples (the loss denominator).
        num_skipped (int): rows read but dropped (empty, or nothing supervised after truncation).
    """

    source: str
    kind: str
    split: str
    num_samples: int
    max_seq_len: int
    num_tokens: int
    num_skipped: int = 0


@dataclasses.dataclass(frozen=True)
class ProbeData:
    """A tokenized probe set.

    Attributes:
        samples (list[ProbeSample]): the samples, in source order.
        pad_id (int): token id used to right-pad batches (its labels are always ignored).
        info (ProbeSetInfo): the data identity.
    """

    samples: list[ProbeSample]
    pad_id: int
    info: ProbeSetInfo


def probe_dataset(
    tokenizer: Encoder,
    source: str,
    kind: ProbeKind = "text",
    num_samples: int = 1000,
    max_seq_len: int = 512,
    split: str = "train",
    text_column: str = "text",
    instruction_column: str = "instruction",
    output_column: str = "output",
    input_column: str | None = "input",
    seed: int | None = None,
    streaming: bool = False,
    subset: str | None = None,
) -> ProbeData:
    """Read and tokenize a general-domain probe set (spec S1.1).

    ``source`` may be:

    - a ``.txt`` file: one sample per paragraph, paragraphs separated by a blank line (line
      breaks inside a paragraph are kept). ``kind="text"`` only.
    - a ``.jsonl`` / ``.json`` / ``.parquet`` file: read with ``datasets.load_dataset`` and the
      ``json`` / ``parquet`` builder; one row is one sample.
    - a local dataset directory or a Hugging Face dataset id: ``datasets.load_dataset(source,
      split=split)``.

    The first ``num_samples`` *usable* samples in source order are kept (after shuffling with
    ``seed`` if given). Rows whose text is empty, or that have no supervised token left after
    truncation to ``max_seq_len`` (an instruction prompt that fills the whole window), are
    skipped and counted in ``info.num_skipped``. Text samples get the tokenizer's BOS (if it
    has one) and EOS, as in pretraining. Instruction samples tokenize the prompt
    ``"User: {instruction}\\nAssistant:"`` and the answer ``" {output}"`` + EOS separately, so
    the prompt/answer boundary is exact; with byte-level BPE this equals tokenizing the whole
    string, because the pre-tokenizer already splits before a space-led word. A non-empty
    ``input_column`` value (Alpaca style) is appended to the instruction on a new line.

    Do not probe with the test split of an evaluation benchmark (spec S1.1); ``split="test"``
    logs a warning.

    Args:
        tokenizer (Encoder): a torchtune tokenizer with ``encode(text, add_bos, add_eos)``.
        source (str): file path, dataset directory or Hugging Face dataset id.
        kind (str): ``"text"`` (loss on every token) or ``"instruction"`` (loss on the answer).
        num_samples (int): samples to keep. Default: 1000.
        max_seq_len (int): tokens per sample; longer samples are truncated on the right.
            Default: 512.
        split (str): dataset split for a dataset id or directory; ignored for a single file.
            Default: ``"train"``.
        text_column (str): column holding the text (``kind="text"``). Default: ``"text"``.
        instruction_column (str): column holding the instruction. Default: ``"instruction"``.
        output_column (str): column holding the answer. Default: ``"output"``.
        input_column (str | None): optional column with extra input for the instruction; None
            or a column the data lacks means none. Default: ``"input"``.
        seed (int | None): shuffle rows with this seed before taking samples; None keeps the
            source order. Default: None.
        streaming (bool): stream a dataset id instead of downloading all of it (only the rows
            needed are read). Default: False.
        subset (str | None): dataset configuration name, e.g. ``"wikitext-103-raw-v1"``.

    Returns:
        ProbeData: the tokenized samples and their data identity.

    Raises:
        ValueError: ``kind``, ``num_samples`` or ``max_seq_len`` is invalid, a ``.txt`` file is
            used with ``kind="instruction"``, a needed column is missing, or no usable sample
            is left (the source is empty, or every sample is empty or fully masked).
        FileNotFoundError: ``source`` looks like a local file (has a file suffix we read or an
            existing parent path) but does not exist.
    """
    if kind not in _KINDS:
        raise ValueError(f"probe kind={kind!r} is not supported (choose one of {list(_KINDS)})")
    if num_samples <= 0:
        raise ValueError(f"probe num_samples={num_samples} must be a positive integer")
    if max_seq_len < 2:
        raise ValueError(
            f"probe max_seq_len={max_seq_len} must be at least 2 (one token predicts the next)"
        )
    if split == "test":
        logger.warning(
            "probe split='test': spec S1.1 forbids probing with test splits of evaluation "
            "benchmarks; make sure %s is not one",
            source,
        )
    if kind != "text" and Path(source).suffix.lower() == ".txt":
        raise ValueError(
            f"probe kind={kind!r} needs columns, but {source!r} is a .txt file; "
            "use a .jsonl/.json/.parquet file with instruction and output columns"
        )
    rows = read_rows(source, split, seed, streaming, field="source", subset=subset)
    columns = _Columns(kind, text_column, instruction_column, output_column, input_column)
    samples: list[ProbeSample] = []
    skipped = 0
    for row in rows:
        sample = _tokenize_row(tokenizer, columns.extract(row, source), kind, max_seq_len)
        if sample is None:
            skipped += 1
            continue
        samples.append(sample)
        if len(samples) == num_samples:
            break
    if not samples:
        what = "no rows" if skipped == 0 else f"{skipped} rows, all empty or fully masked"
        raise ValueError(
            f"source {source!r} (kind={kind!r}) gave {what}: no sample has a token the "
            "loss counts. Check the file, the column names and max_seq_len."
        )
    if len(samples) < num_samples:
        logger.warning(
            "source %s has only %d usable samples (num_samples=%d)",
            source,
            len(samples),
            num_samples,
        )
    pad_id = getattr(tokenizer, "pad_id", None)
    info = ProbeSetInfo(
        source=str(source),
        kind=kind,
        split=split,
        num_samples=len(samples),
        max_seq_len=max_seq_len,
        num_tokens=sum(s.num_supervised for s in samples),
        num_skipped=skipped,
    )
    return ProbeData(samples=samples, pad_id=0 if pad_id is None else int(pad_id), info=info)


def probe_mixture(
    tokenizer: Encoder, parts: Sequence[Mapping[str, Any]], max_seq_len: int = 512
) -> ProbeData:
    """One probe set of several sources: spec S1.1's plain text *and* instruction pairs.

    Each part is read by ``probe_dataset`` with its own source, kind, columns and
    ``num_samples``; the samples follow each other in part order and share ``max_seq_len``.
    Scores then average over every supervised token of the mixture: text tokens and answer
    tokens alike. In YAML::

        probe:
          _component_: adept_components.data.probe_mixture
          max_seq_len: 1024
          parts:
            - {source: HuggingFaceFW/fineweb-edu, subset: sample-10BT, streaming: true,
               kind: text, num_samples: 500}
            - {source: tatsu-lab/alpaca, kind: instruction, num_samples: 500}

    Args:
        tokenizer (Encoder): a torchtune tokenizer with ``encode(text, add_bos, add_eos)``.
        parts (Sequence[Mapping[str, Any]]): ``probe_dataset`` keyword arguments, one mapping
            per source, without ``tokenizer`` and ``max_seq_len``.
        max_seq_len (int): tokens per sample, for every part. Default: 512.

    Returns:
        ProbeData: the samples of all parts; ``info`` joins the parts' sources, kinds and
        splits with ``" + "`` and sums their counts.

    Raises:
        ValueError: ``parts`` is empty or not a list of mappings, a part sets ``tokenizer`` or
            ``max_seq_len``, or any error of ``probe_dataset`` (named with the part's index).
    """
    if isinstance(parts, (str, Mapping)) or not parts:
        raise ValueError("probe parts must be a non-empty list of probe_dataset settings")
    datasets = []
    for index, part in enumerate(parts):
        if not isinstance(part, Mapping):
            raise ValueError(f"probe parts[{index}] must be a mapping of probe_dataset settings")
        for key in ("tokenizer", "max_seq_len", "_component_"):
            if key in part:
                raise ValueError(
                    f"probe parts[{index}] sets {key!r}: set max_seq_len once for the mixture "
                    "and leave the tokenizer to the recipe"
                )
        try:
            datasets.append(probe_dataset(tokenizer, max_seq_len=max_seq_len, **dict(part)))
        except (TypeError, ValueError) as e:  # TypeError: a key probe_dataset does not take
            raise ValueError(f"probe parts[{index}]: {e}") from None
    infos = [d.info for d in datasets]
    info = ProbeSetInfo(
        source=" + ".join(i.source for i in infos),
        kind=" + ".join(i.kind for i in infos),
        split=" + ".join(i.split for i in infos),
        num_samples=sum(i.num_samples for i in infos),
        max_seq_len=max_seq_len,
        num_tokens=sum(i.num_tokens for i in infos),
        num_skipped=sum(i.num_skipped for i in infos),
    )
    samples = [sample for d in datasets for sample in d.samples]
    return ProbeData(samples=samples, pad_id=datasets[0].pad_id, info=info)


def probe_batches(data: ProbeData, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut a probe set into right-padded batches, in sample order.

    Each batch is padded to its own longest sample: pad tokens are ``data.pad_id`` and pad
    labels ``CROSS_ENTROPY_IGNORE_IDX``, so padding never counts in a loss. Right padding also
    keeps every real token's causal context free of pads, so scores do not depend on how the
    samples are batched.

    Args:
        data (ProbeData): the probe set.
        batch_size (int): samples per batch (the last batch may be smaller).

    Returns:
        list[tuple[torch.Tensor, torch.Tensor]]: ``(tokens, labels)`` pairs, both int64 of
        shape [b, s].

    Raises:
        ValueError: ``batch_size`` is not positive or the probe set is empty.
    """
    if batch_size <= 0:
        raise ValueError(f"probe batch_size={batch_size} must be a positive integer")
    if not data.samples:
        raise ValueError("the probe set has no samples")
    batches = []
    for start in range(0, len(data.samples), batch_size):
        chunk = data.samples[start : start + batch_size]
        tokens = _right_padded([s.tokens for s in chunk], data.pad_id)  # [b, s]
        labels = _right_padded([s.labels for s in chunk], CROSS_ENTROPY_IGNORE_IDX)  # [b, s]
        batches.append((tokens, labels))
    return batches


def _right_padded(rows: list[list[int]], value: int) -> torch.Tensor:
    """[len(rows), longest row] int64, each row right-padded with ``value``."""
    tensors = [torch.tensor(row, dtype=torch.long) for row in rows]
    return pad_sequence(tensors, batch_first=True, padding_value=value)


@dataclasses.dataclass(frozen=True)
class _Columns:
    """Which columns a row must have, and how to turn a row into (prompt, answer) text."""

    kind: str
    text: str
    instruction: str
    output: str
    input: str | None

    def extract(self, row: Mapping[str, Any] | str, source: str) -> tuple[str, str]:
        """Return ``("", text)`` for text samples, ``(prompt, answer)`` for instructions."""
        if isinstance(row, str):  # a .txt paragraph
            return "", row
        if self.kind == "text":
            return "", _cell(row, self.text, "text_column", source)
        instruction = _cell(row, self.instruction, "instruction_column", source)
        answer = _cell(row, self.output, "output_column", source)
        extra = row.get(self.input) if self.input is not None else None
        if isinstance(extra, str) and extra.strip():
            instruction = f"{instruction}\n{extra}"
        if not instruction.strip() or not answer.strip():
            return "", ""
        return f"User: {instruction}\nAssistant:", f" {answer}"


def _cell(row: Mapping[str, Any], column: str, field: str, source: str) -> str:
    if column not in row:
        raise ValueError(
            f"probe {field}={column!r} is not a column of {source!r} "
            f"(columns: {sorted(row.keys())})"
        )
    value = row[column]
    return value if isinstance(value, str) else ""


def _tokenize_row(
    tokenizer: Encoder, text: tuple[str, str], kind: str, max_seq_len: int
) -> ProbeSample | None:
    prompt, answer = text
    if not answer.strip():
        return None
    if kind == "text":
        tokens = tokenizer.encode(answer, add_bos=True, add_eos=True)[:max_seq_len]
        labels = list(tokens)
    else:
        prompt_ids = tokenizer.encode(prompt, add_bos=True, add_eos=False)
        answer_ids = tokenizer.encode(answer, add_bos=False, add_eos=True)
        tokens = (prompt_ids + answer_ids)[:max_seq_len]
        labels = ([CROSS_ENTROPY_IGNORE_IDX] * len(prompt_ids) + answer_ids)[:max_seq_len]
    sample = ProbeSample(tokens=tokens, labels=labels)
    return sample if sample.num_supervised > 0 else None
