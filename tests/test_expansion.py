"""S1.4 expansion and S1.5 trainable set: exact function preservation, HF round trip, freezing.

Base weights are random transformers checkpoints (conftest), read with our checkpointer; the
expanded model must reproduce the base logits bit for bit (fp32, eval mode, CPU), transformers
must load the saved expanded checkpoint with the same logits, and one optimizer step must move
nothing but the copies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import TINY_LLAMA, TINY_QWEN3, save_hf_model

from adept_components.checkpointing import HFCheckpointer
from adept_components.expansion import (
    METADATA_FILENAME,
    ExpansionMetadata,
    expand_model,
    expand_state_dict,
    expansion_extra_json,
    load_expansion_metadata,
    uniform_source_layers,
)
from adept_components.models import architecture_of, model_from_hf_config
from adept_components.trainable import TrainableSummary, freeze_all_but

VARIANTS = {
    "qwen3_untied": TINY_QWEN3,
    "qwen3_tied": {**TINY_QWEN3, "tie_word_embeddings": True},
    "llama3": TINY_LLAMA,
}
# After the first layer, a middle one, the last one, two adjacent ones, first and last.
SOURCE_SETS = [(0,), (1,), (3,), (1, 2), (0, 3)]
BASE_LAYERS = 4
ZERO_INIT = ("attn.output_proj.weight", "mlp.w2.weight")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("expansion_bases")
    return {name: save_hf_model(root / name, arch) for name, arch in VARIANTS.items()}


def _tokens(vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 23), generator=torch.Generator().manual_seed(1))


def _base_model(directory: Path) -> torch.nn.Module:
    model = model_from_hf_config(str(directory))
    HFCheckpointer(str(directory), str(directory / "unused")).load_into(model)
    return model.eval()


def _expanded_model(
    directory: Path, meta: ExpansionMetadata, out: Path
) -> tuple[HFCheckpointer, torch.nn.Module]:
    ckpt = HFCheckpointer(str(directory), str(out))
    model = expand_model(ckpt.architecture, meta)
    model.load_state_dict(expand_state_dict(ckpt.load_state_dict(), meta), strict=True)
    return ckpt, model.eval()


def _hf_logits(directory: Path, tokens: torch.Tensor) -> tuple[torch.nn.Module, torch.Tensor]:
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        return model, model(tokens).logits


# ---------------------------------------------------------------- metadata


def test_positions_and_layer_sources() -> None:
    meta = ExpansionMetadata(base_num_layers=6, source_layers=[5, 1, 2])
    assert meta.source_layers == (1, 2, 5)  # stored sorted, as a tuple
    assert meta.k == 3 and meta.num_layers == 9
    assert meta.copy_positions == [2, 4, 8]
    assert meta.original_positions == [0, 1, 3, 5, 6, 7]
    assert meta.layer_sources == [0, 1, 1, 2, 2, 3, 4, 5, 5]
    first_last = ExpansionMetadata(4, (0, 3))
    assert first_last.copy_positions == [1, 5]
    assert first_last.layer_sources == [0, 0, 1, 2, 3, 3]
    # Qwen3-8B as reported in the paper: 26, 28, 29, 30.
    assert ExpansionMetadata(36, (26, 28, 29, 30)).copy_positions == [27, 30, 32, 34]


def test_metadata_json_round_trip() -> None:
    meta = ExpansionMetadata(6, (1, 2, 5))
    content = meta.to_json()
    assert content == {
        "format_version": 1,
        "base_num_layers": 6,
        "source_layers": [1, 2, 5],
        "num_layers": 9,
        "copy_positions": [2, 4, 8],
        "layer_sources": [0, 1, 1, 2, 2, 3, 4, 5, 5],
    }
    assert ExpansionMetadata.from_json(json.loads(json.dumps(content))) == meta
    assert expansion_extra_json(meta) == {METADATA_FILENAME: content}
    with pytest.raises(ValueError, match="format_version=2"):
        ExpansionMetadata.from_json({**content, "format_version": 2})
    with pytest.raises(ValueError, match="source_layers"):
        ExpansionMetadata.from_json({"format_version": 1, "base_num_layers": 6})
    with pytest.raises(ValueError, match=r"copy_positions=\[2, 4, 7\] disagrees"):
        ExpansionMetadata.from_json({**content, "copy_positions": [2, 4, 7]})


@pytest.mark.parametrize(
    "base_num_layers, layers, message",
    [
        (36, [40], r"source_layers=\[40\] but the base model has 36 layers \(valid: 0..35\)"),
        (36, [-1, 3], r"source_layers=\[-1, 3\] but the base model has 36 layers"),
        (36, [3, 5, 3], r"source_layers=\[3, 3, 5\] repeats layers \[3\]"),
        (36, [], r"source_layers=\[\]: k=0 but k must be in 1..35"),
        (4, [0, 1, 2, 3], r"source_layers=\[0, 1, 2, 3\]: k=4 but k must be in 1..3"),
        (4, [1.0], r"source_layers=\[1.0\] but the base model has 4 layers"),
        (4, [True], r"source_layers=\[True\] but the base model has 4 layers"),
        (0, [0], r"base_num_layers=0 must be a positive integer"),
    ],
)
def test_invalid_metadata_names_the_field(
    base_num_layers: int, layers: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ExpansionMetadata(base_num_layers, layers)


def test_uniform_source_layers() -> None:
    assert uniform_source_layers(36, 4) == [8, 17, 26, 35]
    assert uniform_source_layers(32, 8) == [3, 7, 11, 15, 19, 23, 27, 31]
    assert uniform_source_layers(28, 4) == [6, 13, 20, 27]
    assert uniform_source_layers(10, 3) == [2, 5, 9]  # uneven groups 3, 3, 4; last layer kept
    for num_layers, k in [(36, 0), (36, 36), (36, 40)]:
        with pytest.raises(ValueError, match=rf"k={k} .* \(valid: 1..35\)"):
            uniform_source_layers(num_layers, k)
    with pytest.raises(ValueError, match="num_layers=1"):
        uniform_source_layers(1, 1)


# ---------------------------------------------------------------- S1.4 function preservation


@pytest.mark.parametrize("sources", SOURCE_SETS, ids=str)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_expanded_logits_are_bit_identical(
    hf_dirs: dict[str, Path], tmp_path: Path, variant: str, sources: tuple[int, ...]
) -> None:
    meta = ExpansionMetadata(BASE_LAYERS, sources)
    tokens = _tokens()
    with torch.no_grad():
        expected = _base_model(hf_dirs[variant])(tokens)
        _, model = _expanded_model(hf_dirs[variant], meta, tmp_path)
        assert len(model.layers) == BASE_LAYERS + len(sources)
        assert torch.equal(model(tokens), expected)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_expand_state_dict_copies_and_zeros(hf_dirs: dict[str, Path], variant: str) -> None:
    ckpt = HFCheckpointer(str(hf_dirs[variant]), str(hf_dirs[variant] / "unused"))
    base = ckpt.load_state_dict()
    base_keys = list(base)
    meta = ExpansionMetadata(BASE_LAYERS, (1, 2))
    out = expand_state_dict(base, meta)

    assert list(base) == base_keys  # input not modified
    assert set(out) == set(expand_model(ckpt.architecture, meta).state_dict())
    per_layer = 11 if variant.startswith("qwen3") else 9  # spec S2.1 units per layer
    for position, source in zip(meta.copy_positions, meta.source_layers, strict=True):
        names = [k.split(".", 2)[2] for k in out if k.startswith(f"layers.{position}.")]
        assert len(names) == per_layer
        for name in names:
            copy, original = out[f"layers.{position}.{name}"], base[f"layers.{source}.{name}"]
            assert copy.untyped_storage().data_ptr() != original.untyped_storage().data_ptr()
            if name in ZERO_INIT:
                assert copy.shape == original.shape and not copy.any(), name
            else:
                assert torch.equal(copy, original), name
    # Base layers and non-layer tensors are re-keyed, not copied (see expand_state_dict).
    for layer, position in enumerate(meta.original_positions):
        assert out[f"layers.{position}.mlp.w1.weight"] is base[f"layers.{layer}.mlp.w1.weight"]
    assert out["tok_embeddings.weight"] is base["tok_embeddings.weight"]
    assert ("output.weight" in out) == (variant != "qwen3_tied")

    with pytest.raises(ValueError, match=r"layers 0..5 .* base_num_layers=4"):
        expand_state_dict(out, meta)  # already expanded


def test_builder_route_matches_architecture_route(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    directory = hf_dirs["qwen3_untied"]
    meta = ExpansionMetadata(BASE_LAYERS, (1, 2))
    ckpt, by_arch = _expanded_model(directory, meta, tmp_path)
    by_builder = expand_model(lambda: model_from_hf_config(str(directory)), meta)

    want = {k: v.shape for k, v in by_arch.state_dict().items()}
    assert {k: v.shape for k, v in by_builder.state_dict().items()} == want
    rope = by_builder.layers[0].attn.pos_embeddings
    assert all(layer.attn.pos_embeddings is rope for layer in by_builder.layers)
    copy, source = by_builder.layers[2], by_builder.layers[1]
    assert copy is not source and copy.attn.q_proj.weight is not source.attn.q_proj.weight

    by_builder.load_state_dict(by_arch.state_dict(), strict=True)
    tokens = _tokens()
    with torch.no_grad():
        assert torch.equal(by_builder.eval()(tokens), by_arch(tokens))

    assert expand_model(ckpt.architecture, meta, max_seq_len=64).max_seq_len == 64
    with pytest.raises(ValueError, match="max_seq_len"):
        expand_model(lambda: model_from_hf_config(str(directory)), meta, max_seq_len=64)
    six = ExpansionMetadata(6, (1,))
    for base in (ckpt.architecture, lambda: model_from_hf_config(str(directory))):
        with pytest.raises(ValueError, match="4 layers .* base_num_layers=6"):
            expand_model(base, six)


# ---------------------------------------------------------------- checkpoint round trip

HF_SOURCES = {"qwen3_untied": (0, 3), "qwen3_tied": (1, 2), "llama3": (1, 2)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_saved_expanded_checkpoint_loads_in_transformers(
    hf_dirs: dict[str, Path], tmp_path: Path, variant: str
) -> None:
    meta = ExpansionMetadata(BASE_LAYERS, HF_SOURCES[variant])
    ckpt, model = _expanded_model(hf_dirs[variant], meta, tmp_path / "out")
    saved = ckpt.save(
        model.state_dict(),
        architecture_of(model),
        "expanded",
        layer_sources=meta.layer_sources,
        extra_json=expansion_extra_json(meta),
    )
    config = json.loads((saved / "config.json").read_text())
    assert config["num_hidden_layers"] == meta.num_layers == 6
    if variant.startswith("qwen3"):
        assert config["layer_types"] == ["full_attention"] * 6
    assert json.loads((saved / METADATA_FILENAME).read_text()) == meta.to_json()

    tokens = _tokens()
    _, expected = _hf_logits(hf_dirs[variant], tokens)
    hf_model, logits = _hf_logits(saved, tokens)
    assert len(hf_model.model.layers) == 6
    # The HF copy is the identity too (exact on CPU fp32), so the logits match exactly.
    assert torch.equal(logits, expected)
    position, source = meta.copy_positions[0], meta.source_layers[0]
    hf_copy, hf_source = hf_model.model.layers[position], hf_model.model.layers[source]
    assert not hf_copy.self_attn.o_proj.weight.any() and not hf_copy.mlp.down_proj.weight.any()
    assert torch.equal(hf_copy.self_attn.q_proj.weight, hf_source.self_attn.q_proj.weight)

    # Resume: the same tensors, the same metadata, the same trainable set.
    reloaded_ckpt = HFCheckpointer(str(saved), str(tmp_path / "out2"))
    reloaded_state = reloaded_ckpt.load_state_dict()
    assert reloaded_state.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded_state[key], value), key
    reloaded_meta = load_expansion_metadata(saved)
    assert reloaded_meta == meta
    reloaded = model_from_hf_config(str(saved))
    reloaded_ckpt.load_into(reloaded, reloaded_state)
    freeze_all_but(model, meta.copy_positions)
    freeze_all_but(reloaded, reloaded_meta.copy_positions)
    assert _trainable_names(reloaded) == _trainable_names(model)
    assert load_expansion_metadata(hf_dirs[variant]) is None  # base model: no record


def test_load_expansion_metadata_checks_depth(tmp_path: Path) -> None:
    (tmp_path / METADATA_FILENAME).write_text(json.dumps(ExpansionMetadata(4, (1,)).to_json()))
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 6}))
    with pytest.raises(ValueError, match="4 \\+ 1 = 5 layers .* num_hidden_layers=6"):
        load_expansion_metadata(tmp_path)


# ---------------------------------------------------------------- S1.5 trainable set


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_trainable_summary_format() -> None:
    summary = TrainableSummary((27, 30, 32, 34), 805_396_480, 8_996_131_840)
    assert str(summary) == "trainable: 805,396,480 / 8,996,131,840 (8.95%)"


@pytest.mark.parametrize("variant", ["qwen3_tied", "llama3"])
def test_adamw_steps_train_only_the_copies(
    hf_dirs: dict[str, Path], tmp_path: Path, variant: str
) -> None:
    meta = ExpansionMetadata(BASE_LAYERS, (0, 2))
    _, model = _expanded_model(hf_dirs[variant], meta, tmp_path)
    summary = freeze_all_but(model, meta.copy_positions)
    copies = {f"layers.{p}." for p in meta.copy_positions}
    in_copy = {n: n.startswith(tuple(copies)) for n, _ in model.named_parameters()}
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    assert _trainable_names(model) == {n for n, c in in_copy.items() if c}
    assert summary.trainable_params == sum(sizes[n] for n, c in in_copy.items() if c)
    assert summary.total_params == sum(sizes.values())  # a tied head is counted once
    assert summary.trainable_layers == (1, 4)

    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    # No weight decay: a tensor moves only where its gradient is nonzero.
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
    model.train()
    tokens = _tokens()

    def step() -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        logits = model(tokens)  # [b, s, v]
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        optimizer.step()
        return grads

    grads = step()
    for name, param in model.named_parameters():
        if not in_copy[name]:
            assert grads[name] is None, name
            assert torch.equal(param, initial[name]), name
            continue
        # Step 0: output_proj and w2 are zero, so no gradient reaches anything before them in
        # the block (q/k/v, q/k norms, w1/w3, both RMSNorm scales): those gradients exist but
        # are exactly zero, and only output_proj and w2 move.
        zero_init = name.endswith(ZERO_INIT)
        assert bool(grads[name].any()) == zero_init, name
        assert torch.equal(param, initial[name]) != zero_init, name

    grads = step()
    for name, param in model.named_parameters():
        if in_copy[name]:
            # Step 1: the projections are nonzero now, so every tensor of a copy learns.
            assert grads[name].any(), name
            assert not torch.equal(param, initial[name]), name
        else:
            assert grads[name] is None and torch.equal(param, initial[name]), name


def test_freeze_all_but_rejects_bad_layers(hf_dirs: dict[str, Path]) -> None:
    model = model_from_hf_config(str(hf_dirs["qwen3_untied"]))
    for layers in ([], [4], [-1]):
        with pytest.raises(ValueError, match=r"trainable_layers=.* has 4 layers"):
            freeze_all_but(model, layers)
    with pytest.raises(ValueError, match="repeats"):
        freeze_all_but(model, [1, 1])


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation_ckpt"])
def test_no_autograd_graph_below_the_lowest_copy(
    hf_dirs: dict[str, Path], tmp_path: Path, checkpointing: bool
) -> None:
    """The frozen prefix runs as inference: its outputs carry no graph, so backward stops at
    the lowest copy (the saving the CPU benchmark measures); from that copy up they do."""
    from torchtune import training
    from torchtune.modules import TransformerSelfAttentionLayer

    meta = ExpansionMetadata(BASE_LAYERS, (2, 3))  # copies at positions 3 and 5 of 6
    _, model = _expanded_model(hf_dirs["qwen3_untied"], meta, tmp_path / "out")
    freeze_all_but(model, meta.copy_positions)
    if checkpointing:
        training.set_activation_checkpointing(
            model, auto_wrap_policy={TransformerSelfAttentionLayer}
        )
    model.train()
    tracked = []
    for layer in model.layers:
        layer.register_forward_hook(lambda m, i, out: tracked.append(out.requires_grad))
    model(_tokens()).sum().backward()
    lowest = min(meta.copy_positions)
    assert tracked == [position >= lowest for position in range(meta.num_layers)]
