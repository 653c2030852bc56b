"""HF checkpointer: sharded load/save, atomic writes, readable errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import TINY_QWEN3, save_hf_model

from adept_components.checkpointing import HFCheckpointer
from adept_components.models import architecture_of, model_from_hf_config


def _loaded(src: Path, out: Path) -> tuple[HFCheckpointer, torch.nn.Module]:
    ckpt = HFCheckpointer(str(src), str(out))
    model = model_from_hf_config(str(src))
    ckpt.load_into(model)
    return ckpt, model


def test_sharded_save_and_load_roundtrip(tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    ckpt, model = _loaded(tiny_qwen3_dir, tmp_path / "out")
    ckpt.max_shard_size = 20_000  # bytes: forces several shards
    (tiny_qwen3_dir / "tokenizer_config.json").write_text("{}")
    saved = ckpt.save(model.state_dict(), architecture_of(model), "sharded")
    index = json.loads((saved / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((saved / s).is_file() for s in shards)
    assert not (saved / "model.safetensors").exists()
    assert (saved / "tokenizer_config.json").is_file() and (
        saved / "generation_config.json"
    ).is_file()

    reloaded = model_from_hf_config(str(saved))
    HFCheckpointer(str(saved), str(tmp_path / "out2")).load_into(reloaded)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_failed_save_leaves_previous_checkpoint_and_nothing_complete_looking(
    tiny_qwen3_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    ckpt, model = _loaded(tiny_qwen3_dir, out)
    ckpt.max_shard_size = 20_000
    first = ckpt.save(model.state_dict(), architecture_of(model), "latest")
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    real_save = safetensors.torch.save_file
    calls = {"n": 0}

    def failing_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated after the first shard)")
        return real_save(*args, **kwargs)

    # huggingface_hub's save_torch_state_dict looks save_file up here at every call.
    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(model.state_dict(), architecture_of(model), "latest")

    assert calls["n"] == 2
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == ["latest"]  # no temp dir left behind


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path: Path) -> None:
    src = save_hf_model(tmp_path / "hf", TINY_QWEN3)
    wider = save_hf_model(tmp_path / "wider", {**TINY_QWEN3, "intermediate_size": 128})
    model = model_from_hf_config(str(wider))
    with pytest.raises(ValueError) as err:
        HFCheckpointer(str(src), str(tmp_path / "out")).load_into(model)
    message = str(err.value)
    assert "model.layers.0.mlp.gate_proj.weight" in message
    assert "(96, 48)" in message and "(128, 48)" in message


def test_missing_tensor_is_named(tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    deeper = save_hf_model(tmp_path / "deeper", {**TINY_QWEN3, "num_hidden_layers": 5})
    model = model_from_hf_config(str(deeper))
    with pytest.raises(ValueError, match=r"missing \(e\.g\. \['model\.layers\.4\."):
        HFCheckpointer(str(tiny_qwen3_dir), str(tmp_path / "out")).load_into(model)


def test_index_listing_a_missing_shard(tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    (tiny_qwen3_dir / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        HFCheckpointer(str(tiny_qwen3_dir), str(tmp_path / "out"))


def test_bin_weights_load_with_weights_only(tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(tiny_qwen3_dir / "model.safetensors"))
    torch.save(state, tiny_qwen3_dir / "pytorch_model.bin")
    (tiny_qwen3_dir / "model.safetensors").unlink()
    loaded = HFCheckpointer(str(tiny_qwen3_dir), str(tmp_path / "out")).load_state_dict()
    assert torch.equal(
        loaded["layers.0.attn.q_norm.scale"], state["model.layers.0.self_attn.q_norm.weight"]
    )


def test_original_weights_are_not_copied(tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    original = tiny_qwen3_dir / "original"
    original.mkdir()
    (original / "tokenizer.model").write_text("x")
    (original / "consolidated.00.pth").write_bytes(b"0" * 100)
    ckpt, model = _loaded(tiny_qwen3_dir, tmp_path / "out")
    saved = ckpt.save(model.state_dict(), architecture_of(model), "final")
    assert (saved / "original" / "tokenizer.model").is_file()
    assert not (saved / "original" / "consolidated.00.pth").exists()
