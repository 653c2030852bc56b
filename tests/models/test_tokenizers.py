"""Tests for ``adept_components.models.tokenizers`` against locally trained reference tokenizers.

Nothing is downloaded: a small byte-level BPE is trained with the ``tokenizers`` library on the
text below and saved the way the checkpoints ship it (Qwen: ``vocab.json``/``merges.txt``/
``tokenizer.json``; Llama 3: a tiktoken ``original/tokenizer.model``). The builders must then
reproduce the ``tokenizers`` ids exactly. Each reference tokenizer uses the model family's own
split regex (taken from torchtune), because the two differ: Qwen splits numbers into single
digits, Llama 3 into groups of up to three.
"""

from __future__ import annotations

import base64
import json
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torchtune.models.llama3._tokenizer import CL100K_PATTERN, LLAMA3_SPECIAL_TOKENS
from torchtune.models.qwen2._tokenizer import PRETOKENIZE_REGEX as QWEN_PATTERN
from torchtune.models.qwen2._tokenizer import bytes_to_unicode

from adept_components.models.tokenizers import (
    hf_tokenizer,
    llama3_tokenizer,
    qwen3_tokenizer,
    vocabulary_size,
)

# Added after the base vocab, as in Qwen3's tokenizer.json (torchtune's Qwen2.5 tokenizer needs
# the two tool-call tokens to exist).
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. It's raining, isn't it? We'll see; they'd know.
Continual pretraining adapts a base language model to a new domain without forgetting the old one.
Selected layers are expanded and only the new units are tuned, while the rest stay frozen.
Prices rose from $1,234.56 to $2,345.67 (an increase of 90.03%) between 2019-03-14 and 2024-11-30.
Call 555-0123 or +44 20 7946 0958; order #00042 ships in 3-5 days. Pi is 3.14159265358979.
def tokenize(text: str) -> list[int]:
    ids = [vocab[t] for t in text.split()]  # map words to ids
    return ids if ids else [0]

for (i = 0; i < 100; i++) { total += values[i] * 2; }
{"name": "adept", "layers": [4, 8, 12], "ratio": 0.25, "ok": true}
Naïve café owners serve crème brûlée and jalapeño piñata cakes; the façade is très belle.
Über den Fluss fährt eine Fähre; Straße, Größe und Äpfel sind schön. ¿Qué tal? ¡Muy bien!
Привет, мир! Как дела? Ελληνικά γράμματα: α β γ δ. 日本語の文章と中文的句子，还有한국어 문장。
Emoji and symbols: 🙂 🚀 ✓ → ← ≤ ≥ ± × ÷ € £ ¥ © ® ™ … “quoted” ‘single’ — dash – en.
Tabs\tseparate\tcolumns\tand  double  spaces   or   triple   spaces appear in messy text.
Lines end with CRLF sometimes.\r\nAnd blank lines follow.\n\n\nThen more text resumes here.
"""


def _corpus() -> list[str]:
    lines = [TRAINING_TEXT] * 4
    words = ["alpha", "beta", "gamma", "delta", "model", "token", "layer", "train", "data", "loss"]
    for i in range(400):
        w1, w2 = words[i % 10], words[(i * 7) % 10]
        lines.append(
            f"Step {i}: {w1}_{w2} loss={(i * 37) % 1000 / 100:.2f} lr={i * 13 % 997}e-5 "
            f"batch#{i:04d} at {1990 + i % 35}-{1 + i % 12:02d}-{1 + i % 28:02d}; "
            f"I'm sure you've seen {w1.capitalize()}s {i * 123457 % 1000003} times."
        )
    return lines


# Compared on both tokenizers: runs of spaces, tabs, newlines and CRLF, digits and numbers,
# contractions, accents (one written decomposed), other scripts, emoji, and unseen words.
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "a  b   c    d\n\n\ne\tf\t\tg   \n  h",
    "Order 1234567 costs $89,012.34 on 2025-01-31 (that's 12% off).",
    "They'll say it's fine; we'd've been there. I'M SURE YOU'RE RIGHT.",
    "Crème brûlée, piñata, straße, Ελληνικά, Привет мир, 日本語と中文，한국어。",
    "Cafe\u0301 with a decomposed accent, and 🙂🚀 emoji.",
    "Zyxwvuts qwertyuiop xkcd!!! ~~~ <<>> {[()]} ###",
    "  leading spaces and trailing spaces  \r\n",
    "def f(x):\n    return x ** 2  # square\n\n\nprint(f(12))\n",
]


def _train(pattern: str, normalize: bool) -> Tokenizer:
    """Train a byte-level BPE whose pre-tokenizer is ``pattern`` + GPT-2 byte mapping."""
    tok = Tokenizer(models.BPE())
    if normalize:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return tok


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> tuple[Tokenizer, Path]:
    """A Qwen-style reference tokenizer and the model directory holding its files."""
    # Qwen's tokenizer.json has an NFC normalizer; torchtune's Qwen2Tokenizer applies NFC too.
    tok = _train(QWEN_PATTERN, normalize=True)
    base = tok.get_vocab_size()
    assert 500 <= base <= 1000, base
    tok.add_special_tokens(QWEN_SPECIALS)  # ids base, base + 1, ... like Qwen's 151643, ...
    model_dir = tmp_path_factory.mktemp("qwen3_model")
    tok.model.save(str(model_dir))  # vocab.json + merges.txt
    tok.save(str(model_dir / "tokenizer.json"))
    return tok, model_dir


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[Tokenizer, Path]:
    """A Llama-3-style reference tokenizer and a model directory with its tiktoken file."""
    # Llama 3's tokenizer.json has no normalizer; tiktoken does not normalize either.
    tok = _train(CL100K_PATTERN, normalize=False)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab = tok.get_vocab()
    # The trainer numbers the 256 byte symbols first, then each merge result in merge order,
    # so a token's id is its merge rank: exactly what tiktoken's ranks are. The file holds only
    # this base vocab; torchtune's Llama3Tokenizer registers its 256 special tokens itself, at
    # the fixed ids 128000..128256 of the real vocab (not at len(base vocab)).
    assert sorted(vocab.values()) == list(range(len(vocab)))
    lines = [
        f"{base64.b64encode(bytes(byte_of[c] for c in token)).decode()} {rank}"
        for token, rank in sorted(vocab.items(), key=lambda item: item[1])
    ]
    model_dir = tmp_path_factory.mktemp("llama3_model")
    (model_dir / "original").mkdir()
    (model_dir / "original" / "tokenizer.model").write_text("\n".join(lines) + "\n")
    return tok, model_dir


# ------------------------------------------------------------------------------------ Qwen3


@pytest.mark.parametrize("text", TEXTS)
def test_qwen3_ids_match_reference(qwen, text):
    ref, model_dir = qwen
    tok = qwen3_tokenizer(str(model_dir))
    ids = tok.encode(text, add_bos=False, add_eos=False)
    assert ids == ref.encode(text).ids
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)


def test_qwen3_special_tokens_come_from_tokenizer_json(qwen):
    ref, model_dir = qwen
    tok = qwen3_tokenizer(str(model_dir))
    assert tok.special_tokens == {t: ref.token_to_id(t) for t in QWEN_SPECIALS}
    text = "doc one<|endoftext|>doc two"
    ids = tok.encode(text, add_bos=False, add_eos=False)
    assert ids == ref.encode(text).ids
    assert ids.count(ref.token_to_id("<|endoftext|>")) == 1
    assert tok.decode(ids) == text


def test_qwen3_eos_is_endoftext(qwen):
    ref, model_dir = qwen
    endoftext = ref.token_to_id("<|endoftext|>")
    tok = qwen3_tokenizer(str(model_dir))
    assert tok.eos_id == endoftext
    assert tok.eos_id != ref.token_to_id("<|im_end|>")  # torchtune's own default
    assert tok.stop_tokens[0] == endoftext
    ids = tok.encode("hello world", add_bos=True, add_eos=True)
    assert ids == ref.encode("hello world").ids + [endoftext]  # Qwen has no BOS

    chat = qwen3_tokenizer(str(model_dir), eos_token="<|im_end|>")
    assert chat.eos_id == ref.token_to_id("<|im_end|>")


def test_qwen3_vocab_file_path_with_merges_file(qwen):
    ref, model_dir = qwen
    tok = qwen3_tokenizer(
        str(model_dir / "vocab.json"),
        merges_file=str(model_dir / "merges.txt"),
        special_tokens_path=str(model_dir / "tokenizer.json"),
    )
    from_dir = qwen3_tokenizer(str(model_dir))
    for text in TEXTS:
        ids = tok.encode(text, add_bos=False, add_eos=False)
        assert ids == ref.encode(text).ids
        assert ids == from_dir.encode(text, add_bos=False, add_eos=False)
    assert tok.eos_id == ref.token_to_id("<|endoftext|>")


def test_qwen3_missing_files(qwen, tmp_path):
    _, model_dir = qwen
    with pytest.raises(FileNotFoundError, match=r"vocab\.json.*tune download Qwen/Qwen3-8B"):
        qwen3_tokenizer(str(tmp_path))
    for name in ("merges.txt", "tokenizer.json"):
        partial = tmp_path / f"without_{name}"
        partial.mkdir()
        for f in ("vocab.json", "merges.txt", "tokenizer.json"):
            if f != name:
                (partial / f).write_bytes((model_dir / f).read_bytes())
        with pytest.raises(FileNotFoundError, match=rf"{name}.*--output-dir DIR"):
            qwen3_tokenizer(str(partial))
    with pytest.raises(ValueError, match="merges_file"):
        qwen3_tokenizer(str(model_dir / "vocab.json"))


def test_qwen3_bad_eos_token(qwen):
    _, model_dir = qwen
    with pytest.raises(ValueError, match=r"eos_token='</s>'.*<\|endoftext\|>, <\|im_start\|>"):
        qwen3_tokenizer(str(model_dir), eos_token="</s>")


def test_qwen3_tokenizer_json_without_required_tokens(qwen, tmp_path):
    _, model_dir = qwen
    data = json.loads((model_dir / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<tool_call>"]
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="<tool_call>"):
        qwen3_tokenizer(str(model_dir), special_tokens_path=str(bad))


def test_qwen3_truncation_type(qwen):
    _, model_dir = qwen
    assert qwen3_tokenizer(str(model_dir), max_seq_len=16).max_seq_len == 16
    with pytest.raises(ValueError, match="truncation_type"):
        qwen3_tokenizer(str(model_dir), truncation_type="left")


# ---------------------------------------------------------------------------------- Llama 3


@pytest.mark.parametrize("text", TEXTS)
def test_llama3_ids_match_reference(llama, text):
    ref, model_dir = llama
    tok = llama3_tokenizer(str(model_dir))
    ids = tok.encode(text, add_bos=False, add_eos=False)
    assert ids == ref.encode(text).ids
    assert tok.decode(ids) == text


def test_llama3_file_path_bos_eos(llama):
    ref, model_dir = llama
    tok = llama3_tokenizer(str(model_dir / "original" / "tokenizer.model"), max_seq_len=64)
    assert tok.base_vocab_size == ref.get_vocab_size()
    assert (tok.bos_id, tok.eos_id) == (128000, 128001)
    assert tok.max_seq_len == 64
    ids = tok.encode(TEXTS[2], add_bos=True, add_eos=True)
    assert ids == [128000] + ref.encode(TEXTS[2]).ids + [128001]
    assert tok.decode(ids) == TEXTS[2]


def test_llama3_special_tokens_path(llama, tmp_path):
    ref, model_dir = llama
    # A tokenizer.json whose special tokens follow the small base vocab directly.
    names = sorted(LLAMA3_SPECIAL_TOKENS, key=LLAMA3_SPECIAL_TOKENS.__getitem__)
    base = ref.get_vocab_size()
    added = [{"id": base + i, "content": name, "special": True} for i, name in enumerate(names)]
    full = tmp_path / "tokenizer.json"
    full.write_text(json.dumps({"added_tokens": added}))
    tok = llama3_tokenizer(str(model_dir), special_tokens_path=str(full))
    eos = base + names.index("<|end_of_text|>")
    assert tok.eos_id == eos
    assert tok.encode("hi there", add_bos=False) == ref.encode("hi there").ids + [eos]

    # A stock Llama 3.1 tokenizer.json has neither <|step_id|> nor <|image|>.
    partial = tmp_path / "partial.json"
    keep = [t for t in added if t["content"] not in ("<|step_id|>", "<|image|>")]
    partial.write_text(json.dumps({"added_tokens": keep}))
    with pytest.raises(ValueError, match=r"<\|step_id\|>, <\|image\|>"):
        llama3_tokenizer(str(model_dir), special_tokens_path=str(partial))


def test_llama3_missing_file(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"original/tokenizer\.model.*tune download meta-llama/Llama-3\.1-8B-Instruct",
    ):
        llama3_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"nope\.model"):
        llama3_tokenizer(str(tmp_path / "nope.model"))


def test_digit_splitting_differs_between_families(qwen, llama):
    """The two reference tokenizers really differ, so each comparison above is family-specific."""
    _, qwen_dir = qwen
    _, llama_dir = llama
    qwen_tok = qwen3_tokenizer(str(qwen_dir))
    llama_tok = llama3_tokenizer(str(llama_dir))
    number = "2024 1234567"
    qwen_pieces = [qwen_tok.decode([i]) for i in qwen_tok.encode(number, False, False)]
    llama_pieces = [llama_tok.decode([i]) for i in llama_tok.encode(number, False, False)]
    assert all(len(p.strip()) <= 1 for p in qwen_pieces), qwen_pieces
    assert any(len(p.strip()) > 1 for p in llama_pieces), llama_pieces


# ------------------------------------------------------------------ any tokenizer.json


@pytest.fixture(scope="module")
def smol_style(tmp_path_factory) -> tuple[Tokenizer, Path]:
    """A SmolLM2-style tokenizer.json: byte-level BPE, specials at ids 0.. before the vocab.

    SmolLM2's file has ``<|endoftext|>`` = 0, ``<|im_start|>`` = 1, ``<|im_end|>`` = 2 and a
    post-processor that adds nothing; a ``TemplateProcessing`` that would add ``<|im_start|>``
    is attached here so the test shows the file's own post-processing is not applied.
    """
    from tokenizers import processors

    tok = _train(QWEN_PATTERN, normalize=False)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    start = tok.token_to_id("<|im_start|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", start)]
    )
    model_dir = tmp_path_factory.mktemp("smol_model")
    tok.save(str(model_dir / "tokenizer.json"))
    return tok, model_dir


@pytest.mark.parametrize("text", TEXTS)
def test_hf_tokenizer_ids_equal_the_tokenizers_library(smol_style, text):
    ref, model_dir = smol_style
    tok = hf_tokenizer(str(model_dir))
    assert (
        tok.encode(text, add_bos=False, add_eos=False)
        == ref.encode(text, add_special_tokens=False).ids
    )
    endoftext = ref.token_to_id("<|endoftext|>")
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids + [endoftext]


def test_hf_tokenizer_separator_by_name_and_optional_bos(smol_style):
    ref, model_dir = smol_style
    default = hf_tokenizer(str(model_dir / "tokenizer.json"))  # the file itself works too
    assert default.eos_id == ref.token_to_id("<|endoftext|>")
    assert default.bos_id is None and default.vocab_size == ref.get_vocab_size()
    chat = hf_tokenizer(str(model_dir), eos_token="<|im_end|>", bos_token="<|im_start|>")
    body = ref.encode("hello world", add_special_tokens=False).ids
    assert chat.encode("hello world") == [ref.token_to_id("<|im_start|>"), *body] + [
        ref.token_to_id("<|im_end|>")
    ]
    assert chat.encode("hello world", add_bos=False, add_eos=False) == body
    assert chat.decode(chat.encode("hello world", add_bos=False, add_eos=False)) == "hello world"


def test_hf_tokenizer_default_separator_is_the_models_end_of_text(tmp_path):
    tok = _train(QWEN_PATTERN, normalize=False)
    tok.add_special_tokens(["<s>", "</s>"])  # Llama 2 / Mistral style
    tok.save(str(tmp_path / "tokenizer.json"))
    assert hf_tokenizer(str(tmp_path)).eos_id == tok.token_to_id("</s>")


def test_hf_tokenizer_unknown_token_lists_similar_ones(smol_style):
    _, model_dir = smol_style
    with pytest.raises(ValueError, match="eos_token='<|end_of_text|>' is not a token") as info:
        hf_tokenizer(str(model_dir), eos_token="<|end_of_text|>")
    assert "similar tokens: <|endoftext|>" in str(info.value)
    with pytest.raises(ValueError, match="bos_token='<bos>' is not a token"):
        hf_tokenizer(str(model_dir), bos_token="<bos>")


def test_hf_tokenizer_without_end_of_text_needs_eos_token(tmp_path):
    tok = _train(QWEN_PATTERN, normalize=False)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="set tokenizer.eos_token") as info:
        hf_tokenizer(str(tmp_path))
    assert "<|im_start|>, <|im_end|>" in str(info.value)
    assert hf_tokenizer(str(tmp_path), eos_token="<|im_end|>").eos_id == tok.token_to_id(
        "<|im_end|>"
    )


def test_hf_tokenizer_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json there"):
        hf_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(ValueError, match="is not a Hugging Face tokenizer file"):
        hf_tokenizer(str(tmp_path))


def test_vocabulary_size_of_every_builder(qwen, llama, smol_style):
    qwen_ref, qwen_dir = qwen
    assert vocabulary_size(qwen3_tokenizer(str(qwen_dir))) == qwen_ref.get_vocab_size()
    # torchtune registers Llama 3's specials at 128000..128256 (one past the embedding of the
    # text models); text ids and BOS/EOS/pad (128000, 128001, 128004) are what a corpus uses.
    assert vocabulary_size(llama3_tokenizer(str(llama[1]))) == 128_005
    smol_ref, smol_dir = smol_style
    assert vocabulary_size(hf_tokenizer(str(smol_dir))) == smol_ref.get_vocab_size()


def test_token_cache_key_follows_the_separator(smol_style):
    from adept_components.data.token_cache import tokenizer_cache_key

    _, model_dir = smol_style
    a = tokenizer_cache_key(hf_tokenizer(str(model_dir)))
    assert a == tokenizer_cache_key(hf_tokenizer(str(model_dir)))
    assert a != tokenizer_cache_key(hf_tokenizer(str(model_dir), eos_token="<|im_end|>"))
