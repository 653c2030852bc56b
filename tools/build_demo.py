"""Build the tiny demo base model shipped in ``adept_components/assets/demo/base_model``.

A real continual-pretraining run starts from a model that already knows general text. The demo
needs the same shape at toy scale: a byte-level BPE tokenizer in Qwen3's on-disk format and a
small Qwen3 decoder pretrained on general English prose (``general.txt``) only, so that the
mathematics corpus (``domain.txt``) is new to it. Run once by maintainers; the result is
committed. Needs the ``tokenizers`` package (installed with the ``test`` extra).

A maintainer's script, not part of the installed package; from the repository root::

    python tools/build_demo.py

Tests (``train_qwen_tokenizer``) and benchmarks (``pretrain``, ``DEMO_ARCHITECTURE``) import it
with ``tools/`` on ``sys.path``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from adept_components.models.architecture import ModelArchitecture

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "adept_components" / "assets" / "demo"
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
DEMO_ARCHITECTURE = ModelArchitecture(
    family="qwen3",
    vocab_size=2048,
    num_layers=8,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=128,
    intermediate_dim=384,
    head_dim=32,
    max_seq_len=1024,
    norm_eps=1e-6,
    rope_base=1_000_000.0,
    tie_word_embeddings=True,
)


def train_qwen_tokenizer(texts: list[str], vocab_size: int, out_dir: Path) -> int:
    """Train a byte-level BPE with Qwen's pre-tokenizer and save it as Qwen3 checkpoints do.

    Writes ``vocab.json``, ``merges.txt`` and ``tokenizer.json`` (special tokens after the
    base vocabulary, ``<|endoftext|>`` first), which ``qwen3_tokenizer`` reads.

    Args:
        texts (list[str]): training text.
        vocab_size (int): base vocabulary size (256 byte symbols + merges).
        out_dir (Path): directory to write into (created).

    Returns:
        int: number of ids including the special tokens.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from adept_components._torchtune import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(QWEN_SPECIAL_TOKENS)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(out_dir))
    tok.save(str(out_dir / "tokenizer.json"))
    return tok.get_vocab_size()


def pretrain(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    steps: int,
    seq_len: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Plain next-token pretraining on random windows of a token stream (AdamW, cosine).

    Args:
        model (nn.Module): decoder to train in place.
        tokens (torch.Tensor): 1-D token stream.
        steps (int): optimizer steps.
        seq_len (int): window length.
        batch_size (int): windows per step.
        lr (float): peak learning rate.
        seed (int): window sampling seed.

    Returns:
        list[float]: loss per step.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        ),
    )
    model.train()
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch_size,), generator=gen)
        batch = torch.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()])  # [b, s+1]
        logits = model(batch[:, :-1])  # [b, s, v]
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def build(out_dir: Path, steps: int) -> None:
    """Train the tokenizer, pretrain the model on general text and save an HF directory."""
    from adept_components.models.tokenizers import qwen3_tokenizer

    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import write_hf_model  # the one HF writer the benchmarks' base models use too

    general = (DEMO_DIR / "general.txt").read_text()
    domain = (DEMO_DIR / "domain.txt").read_text()
    tok_dir = out_dir.parent / f".{out_dir.name}.tokenizer"
    shutil.rmtree(tok_dir, ignore_errors=True)
    n_ids = train_qwen_tokenizer(
        [general, domain], DEMO_ARCHITECTURE.vocab_size - len(QWEN_SPECIAL_TOKENS), tok_dir
    )
    assert n_ids == DEMO_ARCHITECTURE.vocab_size, n_ids
    tokenizer = qwen3_tokenizer(str(tok_dir))
    stream = []
    for paragraph in general.split("\n\n"):
        stream += tokenizer.encode(paragraph, add_bos=False, add_eos=True)
    tokens = torch.tensor(stream)

    torch.manual_seed(0)
    model = DEMO_ARCHITECTURE.build()
    with torch.no_grad():  # torchtune leaves nn.Embedding at N(0, 1): huge tied logits at step 0
        model.tok_embeddings.weight.normal_(0.0, 0.02)
    start = time.perf_counter()
    losses = pretrain(model, tokens, steps)
    print(
        f"pretrained {sum(p.numel() for p in model.parameters()):,} parameters on "
        f"{tokens.numel():,} tokens: loss {losses[0]:.3f} -> {sum(losses[-20:]) / 20:.3f} "
        f"in {time.perf_counter() - start:.0f}s"
    )
    write_hf_model(
        out_dir,
        model,
        DEMO_ARCHITECTURE,
        {"bos_token_id": None, "eos_token_id": tokenizer.eos_id, "torch_dtype": "float32"},
        files=sorted(tok_dir.iterdir()),
    )
    shutil.rmtree(tok_dir)
    print(f"wrote {out_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR / "base_model")
    parser.add_argument("--steps", type=int, default=800)
    args = parser.parse_args()
    build(args.out, args.steps)


if __name__ == "__main__":
    main()
