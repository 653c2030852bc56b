"""Tokenizer builders for Qwen3 and Llama 3 checkpoints as `tune download` writes them.

Both builders are plain functions for a YAML ``_component_`` and wrap torchtune's own
tokenizers: Qwen3 ships the Qwen2.5 byte-level BPE files (``vocab.json``/``merges.txt``) so it
gets torchtune's ``Qwen2_5Tokenizer``; Llama 3.x gets torchtune's tiktoken-based
``llama3_tokenizer``. What they add is resolving a model directory to the right files, failing
early with a readable message when a file is missing, and (Qwen3) choosing the end-of-text token
that base-model continual pretraining needs.
"""

from __future__ import annotations

from pathlib import Path

from torchtune.models.llama3 import Llama3Tokenizer
from torchtune.models.llama3 import llama3_tokenizer as _tt_llama3_tokenizer
from torchtune.models.qwen2_5._tokenizer import QWEN2_5_SPECIAL_TOKENS, Qwen2_5Tokenizer
from torchtune.modules.transforms.tokenizers import parse_hf_tokenizer_json

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
        tokens_file = _require_file(Path(special_tokens_path), "Qwen3 tokenizer.json", hint)
        # torchtune keeps every ``added_tokens`` entry, ``"special": false`` ones (``<think>``,
        # ``<tool_call>``, ...) included, as an atomic token; Hugging Face encodes them so too.
        special_tokens = parse_hf_tokenizer_json(tokens_file)
        missing = [t for t in _QWEN_REQUIRED_TOKENS if t not in special_tokens]
        if missing:
            raise ValueError(
                f"{tokens_file} lacks the special tokens torchtune's Qwen2.5 tokenizer needs: "
                f"{', '.join(missing)}."
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
        tokens_file = _require_file(Path(special_tokens_path), "Llama 3 tokenizer.json", hint)
        special_tokens = parse_hf_tokenizer_json(tokens_file)
        missing = [t for t in _LLAMA3_REQUIRED_TOKENS if t not in special_tokens]
        if missing:
            raise ValueError(
                f"special_tokens_path {tokens_file} lacks the special tokens torchtune's Llama 3 "
                f"tokenizer needs: {', '.join(missing)}. Leave special_tokens_path unset to use "
                "torchtune's canonical Llama 3 ids."
            )
    return _tt_llama3_tokenizer(
        path=model_file, special_tokens_path=special_tokens_path, max_seq_len=max_seq_len
    )
