"""Layer profile (S1.2-S1.3): JSON round trip, pictures, model identity checks, end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_TEXT, write_tiny_qwen3_checkpoint
from importance_fixtures import NEAR_IDENTITY, self_labelled_batches, tiny_model

from adept_components.checkpointing import HFCheckpointer
from adept_components.data import ProbeSetInfo, probe_batches, probe_dataset
from adept_components.importance import (
    HEATMAP_FILE,
    LAYERS_FILE,
    PROFILE_FILE,
    check_profile_matches,
    mask_out_losses,
    model_identity,
    profile_layers,
    read_profile,
    write_profile,
)
from adept_components.models import model_from_hf_config
from adept_components.models.tokenizers import qwen3_tokenizer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA = ProbeSetInfo(
    source="general.jsonl", kind="text", split="train", num_samples=9, max_seq_len=16, num_tokens=80
)


@pytest.fixture(scope="module")
def profiled():
    model = tiny_model()
    batches = self_labelled_batches(model, [[12, 9, 16], [16, 5], [7, 16, 11, 3]])
    profile = profile_layers(model, batches, DATA, k=2, checkpoint_dir="/ckpt/tiny-qwen3")
    return model, batches, profile


def test_profile_records_all_methods_and_selects_near_identity_layers(profiled) -> None:
    model, batches, profile = profiled
    assert profile.method == "mask-out"
    assert profile.selected_layers == list(NEAR_IDENTITY)
    assert profile.scores == mask_out_losses(model, batches).importance
    assert set(profile.layer_scores) == {"mask-out", "grad-cumulative", "rank"}
    assert all(len(s) == 6 for s in profile.layer_scores.values())
    assert sorted(profile.unit_scores) == list(range(6)) and len(profile.unit_scores[0]) == 11
    assert profile.base_loss == pytest.approx(mask_out_losses(model, batches).base_loss)
    assert profile.model.num_layers == 6 and profile.model.architecture["embed_dim"] == 48
    assert "max_seq_len" not in profile.model.architecture


def test_profile_json_round_trip(profiled, tmp_path: Path) -> None:
    _, _, profile = profiled
    paths = write_profile(profile, tmp_path / "out")

    assert paths["json"] == tmp_path / "out" / PROFILE_FILE
    assert read_profile(paths["json"]) == profile
    assert read_profile(tmp_path / "out") == profile
    record = json.loads(paths["json"].read_text())
    assert record["selected_layers"] == [1, 4]
    assert record["model"]["checkpoint_dir"] == "/ckpt/tiny-qwen3"
    assert record["data"]["source"] == "general.jsonl"
    assert record["unit_scores"]["0"].keys() == profile.unit_scores[0].keys()
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]  # atomic: no leftovers


def test_pictures_are_real_pngs(profiled, tmp_path: Path) -> None:
    import matplotlib.image

    _, _, profile = profiled
    paths = write_profile(profile, tmp_path)

    assert paths["units"].name == HEATMAP_FILE and paths["layers"].name == LAYERS_FILE
    for key in ("units", "layers"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG_MAGIC
        assert len(data) > 10_000
        pixels = matplotlib.image.imread(paths[key])  # [h, w, channels]
        assert pixels.shape[0] >= 400 and pixels.shape[1] >= 600
        assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_profile_without_unit_scores_draws_only_the_bar_chart(profiled, tmp_path: Path) -> None:
    model, batches, _ = profiled
    profile = profile_layers(model, batches, DATA, k=1, score_units=False)
    paths = write_profile(profile, tmp_path)
    assert set(paths) == {"json", "layers"} and not (tmp_path / HEATMAP_FILE).exists()
    assert set(profile.layer_scores) == {"mask-out"} and profile.unit_scores == {}
    with pytest.raises(ValueError, match="method='rank' needs score_units=True"):
        profile_layers(model, batches, DATA, k=1, method="rank", score_units=False)


def test_profile_of_another_model_is_refused(profiled) -> None:
    model, _, profile = profiled
    check_profile_matches(profile, model)  # the same model passes
    check_profile_matches(profile, model, "/ckpt/tiny-qwen3")
    with pytest.raises(ValueError, match="6-layer model .* this model has 4 layers"):
        check_profile_matches(profile, tiny_model(num_layers=4, near_identity=()))
    with pytest.raises(ValueError, match="different architecture .*family: profile 'qwen3'"):
        check_profile_matches(profile, tiny_model("llama", near_identity=()))
    with pytest.raises(ValueError, match="checkpoint '/ckpt/tiny-qwen3', not '/ckpt/other'"):
        check_profile_matches(profile, model, "/ckpt/other")


def test_inconsistent_profiles_are_refused(profiled, tmp_path: Path) -> None:
    _, _, profile = profiled
    with pytest.raises(ValueError, match="has 5 entries for a 6-layer model"):
        dataclasses.replace(profile, layer_scores={"mask-out": [0.0] * 5})
    with pytest.raises(ValueError, match="method='fisher'"):
        dataclasses.replace(profile, method="fisher")
    with pytest.raises(ValueError, match=r"selected_layers=\[1, 9\]"):
        dataclasses.replace(profile, selected_layers=[1, 9])
    with pytest.raises(FileNotFoundError, match="no layer profile"):
        read_profile(tmp_path)
    record = profile.to_dict()
    (tmp_path / PROFILE_FILE).write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version=99"):
        read_profile(tmp_path)
    del record["model"]
    (tmp_path / PROFILE_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="not a layer profile record"):
        read_profile(tmp_path)


def test_end_to_end_from_checkpoint_and_probe_file(tmp_path: Path) -> None:
    """Checkpoint + tokenizer on disk -> probe file -> batches -> profile -> files -> check."""
    checkpoint = write_tiny_qwen3_checkpoint(tmp_path / "ckpt", num_layers=4)
    model = model_from_hf_config(str(checkpoint), max_seq_len=64)
    HFCheckpointer(str(checkpoint), str(tmp_path / "unused")).load_into(model)
    tokenizer = qwen3_tokenizer(str(checkpoint))
    sentences = [s.strip() + "." for s in SAMPLE_TEXT.split(".") if s.strip()]
    source = tmp_path / "general.jsonl"
    source.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences))

    data = probe_dataset(tokenizer, str(source), num_samples=3, max_seq_len=32)
    batches = probe_batches(data, batch_size=2)
    profile = profile_layers(model, batches, data.info, k=1, checkpoint_dir=checkpoint)
    write_profile(profile, tmp_path / "out")
    loaded = read_profile(tmp_path / "out")

    assert loaded == profile and loaded.data.num_samples == 3
    assert loaded.model == model_identity(model, checkpoint)
    check_profile_matches(loaded, model, checkpoint)
    assert len(loaded.selected_layers) == 1
    assert loaded.selected_layers == [min(range(4), key=lambda i: (loaded.scores[i], i))]
    assert all(p.grad is None for p in model.parameters())
    assert torch.isfinite(torch.tensor(loaded.scores)).all()
