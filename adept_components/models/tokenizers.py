"""Tokenizer builders: Qwen3 and Llama 3 as `tune download` writes them, and any ``tokenizer.json``.

All builders are plain functions for a YAML ``_component_``. Qwen3 ships the Qwen2.5 byte-level
BPE files (``vocab.json``/``merges.txt``) so it gets torchtune's ``Qwen2_5Tokenizer``; Llama 3.x
gets torchtune's tiktoken-based ``llama3_tokenizer``. What they add is resolving a model
directory to the right files, failing early with a readable message when a file is missing, and
(Qwen3) choosing the end-of-text token that base-model continual pretraining needs.

``hf_tokenizer`` reads any Hugging Face ``tokenizer.json`` (SmolLM2, Mistral, Llama 2, Gemma …)
through the ``tokenizers`` library itself, so its ids are that library's, with the document
separator chosen by name.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer
from torchtune.models.llama3 import Llama3Tokenizer
from torchtune.models.llama3 import llama3_tokenizer as _tt_llama3_tokenizer
from torchtune.modules.transforms.tokenizers import parse_hf_tokenizer_json

from adept_components._torchtune import QWEN2_5_SPECIAL_TOKENS, Qwen2_5Tokenizer

# Tokens ``Qwen2_5Tokenizer.__init__`` looks up by name; without one it raises a bare KeyError.
_QWEN_REQUIRED_TOKENS = (
    "<|endoftext|>",  # the default pad token
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
)

# Tokens ``Llama3Tokenizer.__init__`` looks up by name. Its own check covers only some of them;
# a Llama 3.1 ``tokenizer.json`` has neither ``<|step_id|>`` nor ``<|image|>``.
_LLAMA3_REQUIRED_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
)


def _checked_special_tokens(
    path: str | Path,
    label: str,
    required: tuple[str, ...],
    family: str,
    download_hint: str,
    note: str = "",
) -> dict[str, int]:
    """The special tokens of a ``tokenizer.json``, refusing one that lacks a required token."""
    tokens_file = _require_file(Path(path), label, download_hint)
    special_tokens = parse_hf_tokenizer_json(tokens_file)
    missing = [t for t in required if t not in special_tokens]
    if missing:
        raise ValueError(
            f"{tokens_file} lacks the special tokens torchtune's {family} tokenizer needs: "
            f"{', '.join(missing)}.{note}"
        )
    return special_tokens


def _require_file(path: Path, what: str, download_hint: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} not found: {path}. The directory should be what "
            f"`tune download {download_hint} --output-dir DIR` writes."
        )
    return str(path)


def _list_tokens(tokens: dict[str, int], limit: int = 10) -> str:
    names = sorted(tokens, key=tokens.__getitem__)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def qwen3_tokenizer(
    path: str,
    merges_file: str | None = None,
    special_tokens_path: str | None = None,
    max_seq_len: int | None = None,
    eos_token: str = "<|endoftext|>",
    truncation_type: str = "right",
) -> Qwen2_5Tokenizer:
    """Build torchtune's Qwen2.5 byte-level BPE tokenizer from a Qwen3 checkpoint.

    Qwen3 reuses the Qwen2.5 ``vocab.json``/``merges.txt`` format and pre-tokenizer, so
    torchtune's ``Qwen2_5Tokenizer`` encodes it id-for-id. Two things differ from torchtune's
    ``qwen2_5_tokenizer`` defaults: the special tokens are read from the checkpoint's
    ``tokenizer.json`` (Qwen3 adds ``<think>``, ``</think>``, ... after the Qwen2.5 ones), and the
    end-of-sequence token is ``<|endoftext|>``, the document separator a base model is
    pretrained with, instead of the chat terminator ``<|im_end|>``.

    Args:
        path (str): the model directory (as ``tune download Qwen/Qwen3-8B --output-dir DIR``
            writes it; ``vocab.json``, ``merges.txt`` and ``tokenizer.json`` inside it are used)
            or the ``vocab.json`` file itself.
        merges_file (str | None): path to ``merges.txt``. Required when ``path`` is a file;
            overrides the directory's file otherwise.
        special_tokens_path (str | None): Hugging Face ``tokenizer.json`` whose ``added_tokens``
            give the special tokens. Default: the directory's ``tokenizer.json``; when ``path`` is
            a file, torchtune's canonical Qwen2.5 table (same ids as Qwen3 up to 151664, but
            without Qwen3's ``<think>``/``<tool_response>`` tokens).
        max_seq_len (int | None): maximum length torchtune truncates to. Default: None.
        eos_token (str): special token whose id becomes ``eos_id`` (appended by
            ``encode(..., add_eos=True)``). Default: ``"<|endoftext|>"``.
        truncation_type (str): which end to cut when truncating. torchtune 0.6.1 only cuts the
            right end; the argument exists so configs written for later torchtune versions,
            whose builder takes it, still load. Default: ``"right"``.

    Returns:
        Qwen2_5Tokenizer: torchtune's tokenizer with ``eos_id`` set to ``eos_token``'s id.

    Raises:
        FileNotFoundError: if ``path`` or one of the files it implies does not exist.
        ValueError: if ``merges_file`` is missing for a file ``path``, ``truncation_type`` is not
            ``"right"``, or ``eos_token`` (or a token torchtune needs) is not a special token.
    """
    if truncation_type != "right":
        raise ValueError(
            f"truncation_type={truncation_type!r} is not supported: torchtune 0.6.1 only "
            "truncates on the right."
        )
    hint = "Qwen/Qwen3-8B"
    root = Path(path)
    if root.is_dir():
        vocab = _require_file(root / "vocab.json", "Qwen3 vocab.json", hint)
        merges_file = merges_file or str(root / "merges.txt")
        special_tokens_path = special_tokens_path or str(root / "tokenizer.json")
    else:
        vocab = _require_file(root, "Qwen3 vocab.json", hint)
        if merges_file is None:
            raise ValueError(
                f"merges_file is required when path is the vocab.json file ({path}); "
                "or pass the model directory as path."
            )
    merges = _require_file(Path(merges_file), "Qwen3 merges.txt", hint)

    if special_tokens_path is None:
        special_tokens = dict(QWEN2_5_SPECIAL_TOKENS)
    else:
        # torchtune keeps every ``added_tokens`` entry, ``"special": false`` ones (``<think>``,
        # ``<tool_call>``, ...) included, as an atomic token; Hugging Face encodes them so too.
        special_tokens = _checked_special_tokens(
            special_tokens_path, "Qwen3 tokenizer.json", _QWEN_REQUIRED_TOKENS, "Qwen2.5", hint
        )
    if eos_token not in special_tokens:
        raise ValueError(
            f"eos_token={eos_token!r} is not a special token of this tokenizer; available: "
            f"{_list_tokens(special_tokens)}."
        )
    # ``Qwen2Tokenizer`` sets ``eos_id`` (and ``stop_tokens``) from its ``eos_token`` argument,
    # whose default is ``<|im_end|>``, the chat turn terminator (its docstring wrongly says
    # ``<|endoftext|>``). Base-model continual pretraining must append ``<|endoftext|>`` after
    # each document: it is the boundary the pretrained model already knows, while ``<|im_end|>``
    # would teach it chat turns. So the argument is always passed explicitly.
    return Qwen2_5Tokenizer(
        path=vocab,
        merges_file=merges,
        special_tokens=special_tokens,
        max_seq_len=max_seq_len,
        eos_token=eos_token,
    )


def llama3_tokenizer(
    path: str,
    max_seq_len: int | None = None,
    special_tokens_path: str | None = None,
) -> Llama3Tokenizer:
    """Build torchtune's tiktoken-based Llama 3 tokenizer from a Llama 3.x checkpoint.

    ``tune download meta-llama/Llama-3.1-8B-Instruct`` puts the tiktoken file at
    ``original/tokenizer.model``; this resolves a model directory to it so configs can name
    the checkpoint directory once. torchtune registers the Llama 3 special tokens at fixed ids
    (``<|begin_of_text|>`` = 128000, ``<|end_of_text|>`` = 128001, ...), which is what the
    released checkpoints use, so no ``tokenizer.json`` is needed.

    Args:
        path (str): the model directory (tokenizer at ``original/tokenizer.model``) or the
            ``tokenizer.model`` file itself.
        max_seq_len (int | None): maximum length torchtune truncates to. Default: None.
        special_tokens_path (str | None): Hugging Face ``tokenizer.json`` whose ``added_tokens``
            replace torchtune's table. Default: None (torchtune's canonical Llama 3 ids).
            A stock Llama 3.1 ``tokenizer.json`` lacks ``<|step_id|>`` and ``<|image|>``, which
            torchtune requires, so leave this unset for the released text models.

    Returns:
        Llama3Tokenizer: torchtune's tokenizer; ``eos_id`` is ``<|end_of_text|>``.

    Raises:
        FileNotFoundError: if ``path``, the tokenizer file it implies, or
            ``special_tokens_path`` does not exist.
        ValueError: if ``special_tokens_path`` lacks a token torchtune's tokenizer needs.
    """
    hint = "meta-llama/Llama-3.1-8B-Instruct"
    root = Path(path)
    if root.is_dir():
        model_file = _require_file(
            root / "original" / "tokenizer.model", "Llama 3 tokenizer.model", hint
        )
    else:
        model_file = _require_file(root, "Llama 3 tokenizer.model", hint)
    if special_tokens_path is not None:
        _checked_special_tokens(
            special_tokens_path, "Llama 3 tokenizer.json", _LLAMA3_REQUIRED_TOKENS, "Llama 3",
            hint, " Leave special_tokens_path unset to use torchtune's canonical Llama 3 ids.",
        )  # fmt: skip
    return _tt_llama3_tokenizer(
        path=model_file, special_tokens_path=special_tokens_path, max_seq_len=max_seq_len
    )


# End-of-text tokens of common model families, in the order they are looked for: the document
# separator a base model was pretrained with (not a chat-turn terminator such as <|im_end|>).
END_OF_TEXT_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|end▁of▁sentence|>")


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` with torchtune's ``encode(text, add_bos, add_eos)``.

    Built by ``hf_tokenizer``. Text is encoded by the ``tokenizers`` library without the file's
    own post-processor (``add_special_tokens=False``); BOS and the document separator are added
    here, by id, so a ``tokenizer.json`` that appends chat tokens cannot change the corpus.

    Args:
        tokenizer (tokenizers.Tokenizer): the parsed file.
        tokenizer_file (Path): the ``tokenizer.json`` it came from (hashed for the token cache).
        eos_id (int): id appended after each document (``add_eos``).
        bos_id (int | None): id put before each document (``add_bos``); None adds nothing.
        max_seq_len (int | None): torchtune's message-truncation length; ``encode`` never
            truncates, so packing always sees whole documents.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        tokenizer_file: Path,
        eos_id: int,
        bos_id: int | None = None,
        max_seq_len: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.bos_id = bos_id
        self.pad_id = eos_id  # probe batches ignore pad labels; any real id does
        self.max_seq_len = max_seq_len
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        # What the token cache keys on: the whole file and the chosen special ids.
        digest = hashlib.sha256(Path(tokenizer_file).read_bytes())
        digest.update(f"eos={eos_id},bos={bos_id}".encode())
        self.content_hash = digest.hexdigest()

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Token ids of ``text``: the ``tokenizers`` library's, with BOS/EOS as asked.

        Args:
            text (str): the text.
            add_bos (bool): prepend ``bos_id`` (when the tokenizer has one).
            add_eos (bool): append ``eos_id``, the document separator.

        Returns:
            list[int]: ids.
        """
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of ``token_ids``.

        Args:
            token_ids (list[int]): ids.
            skip_special_tokens (bool): drop special tokens from the text.

        Returns:
            str: the text.
        """
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)


def hf_tokenizer(
    path: str,
    eos_token: str | None = None,
    bos_token: str | None = None,
    max_seq_len: int | None = None,
) -> HFTokenizer:
    """Build a tokenizer from any Hugging Face ``tokenizer.json``.

    The document separator matters for continual pretraining: it is appended after every
    document of the packed corpus, and a base model knows only the one it was pretrained with
    (SmolLM2: ``<|endoftext|>``, id 0; its instruct metadata calls ``<|im_end|>`` the EOS, which
    is a chat-turn terminator). So it is chosen by name, and the default is the model's
    end-of-text token: the first of ``END_OF_TEXT_TOKENS`` the vocabulary has.

    Args:
        path (str): a model directory holding ``tokenizer.json``, or the file itself.
        eos_token (str | None): the document separator, by name; default: the model's
            end-of-text token.
        bos_token (str | None): a token to put before each document (e.g. ``"<s>"`` for
            Llama 2, ``"<bos>"`` for Gemma); default None: none.
        max_seq_len (int | None): kept as torchtune tokenizers keep it; never truncates.

    Returns:
        HFTokenizer: the tokenizer.

    Raises:
        FileNotFoundError: no ``tokenizer.json`` at ``path``.
        ValueError: the file is not a tokenizer, a named token is not in its vocabulary
            (listing similar ones), or no end-of-text token exists and ``eos_token`` is unset.
    """
    root = Path(path).expanduser()
    tokenizer_file = root / "tokenizer.json" if root.is_dir() else root
    if not tokenizer_file.is_file():
        raise FileNotFoundError(
            f"tokenizer.path={path!r}: no tokenizer.json there; point it at the model directory "
            "or at its tokenizer.json"
        )
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as e:  # tokenizers raises a bare Exception for any parse error
        raise ValueError(
            f"{tokenizer_file} is not a Hugging Face tokenizer file ({str(e)[:120]})"
        ) from None
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if eos_token is None:
        eos_token = next((t for t in END_OF_TEXT_TOKENS if t in vocab), None)
        if eos_token is None:
            raise ValueError(
                f"{tokenizer_file} has none of the usual end-of-text tokens "
                f"({', '.join(END_OF_TEXT_TOKENS)}): set tokenizer.eos_token to the document "
                f"separator the model was pretrained with; special tokens: "
                f"{_special_tokens(tokenizer_file)}"
            )
    eos_id = _token_id(vocab, eos_token, "eos_token", tokenizer_file)
    bos_id = None if bos_token is None else _token_id(vocab, bos_token, "bos_token", tokenizer_file)
    return HFTokenizer(
        tokenizer, tokenizer_file, eos_id=eos_id, bos_id=bos_id, max_seq_len=max_seq_len
    )


def _token_id(vocab: dict[str, int], token: str, field: str, tokenizer_file: Path) -> int:
    if token in vocab:
        return vocab[token]
    similar = difflib.get_close_matches(token, list(vocab), n=5, cutoff=0.5)
    hint = f"similar tokens: {', '.join(similar)}" if similar else "no similar token"
    raise ValueError(
        f"tokenizer.{field}={token!r} is not a token of {tokenizer_file} ({hint}); "
        f"special tokens: {_special_tokens(tokenizer_file)}"
    )


def _special_tokens(tokenizer_file: Path, limit: int = 10) -> str:
    added = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("added_tokens") or []
    return _list_tokens({t["content"]: t["id"] for t in added}, limit) or "none"


def vocabulary_size(tokenizer: object) -> int | None:
    """How many embedding rows a tokenizer's ids need (largest id + 1), or None if unknown.

    Counts the ids text can encode to and the special ids the recipe adds (BOS, EOS, pad).
    torchtune's Llama 3 tokenizer registers 256 reserved tokens up to id 128256, one past the
    text models' 128,256-row embedding; they never occur in a corpus, so only its base
    vocabulary counts.

    Args:
        tokenizer (object): a tokenizer built by this module (or any torchtune tokenizer).

    Returns:
        int | None: the id count.
    """
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.vocab_size
    used = [getattr(tokenizer, name, None) for name in ("bos_id", "eos_id", "pad_id")]
    used = [i for i in used if isinstance(i, int)]
    encoder = getattr(tokenizer, "encoder", None)  # torchtune's Qwen2.5 byte-level BPE
    base = getattr(getattr(tokenizer, "tt_model", None), "base_vocab_size", None)  # tiktoken
    if isinstance(encoder, dict):
        special = getattr(tokenizer, "special_tokens", None) or {}
        used += [*encoder.values(), *special.values()]
    elif isinstance(base, int):
        used.append(base - 1)
    elif isinstance(getattr(tokenizer, "vocab_size", None), int):
        used.append(tokenizer.vocab_size - 1)
    return max(used) + 1 if used else None
