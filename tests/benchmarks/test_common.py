"""The benchmarks' shared helpers (``benchmarks/common.py``): log parser, FLOP model, HF writer,
provenance. Every benchmark number passes through these, so they are checked against values
worked out by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import common  # noqa: E402

from adept_components.checkpointing import HFCheckpointer  # noqa: E402
from adept_components.models.architecture import ModelArchitecture  # noqa: E402

# What adept_cpt (tokens_per_second, scale/…, canary/…) and torchtune's recipe
# (tokens_per_second_per_gpu, tensor-printed loss) write through DiskLogger.
LOG = "".join(
    f"Step {line} \n"  # DiskLogger ends every field with a space
    for line in (
        "1 | loss:2.5 lr:0.001 tokens_per_second:1000.0",
        "2 | loss:tensor(2.25) lr:1e-3 tokens_per_second_per_gpu:2000.0",
        "2 | scale/layers.4.attn.q_proj.weight:1.5 scale/layers.4.sa_norm.scale:0.0",
        "2 | canary/general_loss:4.75 canary/general_base:4.5 canary/seconds:3.25",
        "3 | loss:nan lr:1e-3 tokens_per_second:500.0",
        "4 | scale/layers.4.attn.q_proj.weight:2.0 canary/seconds:1.5",
    )
)


def _log_dir(tmp_path: Path, *contents: str) -> Path:
    log_dir = tmp_path / "logs"
    log_dir.mkdir(parents=True)
    for i, text in enumerate(contents):
        (log_dir / f"log_{1700000000 + i}.txt").write_text(text)
    return log_dir


def test_metric_log_fields_times_and_canary(tmp_path: Path) -> None:
    rows = common.read_metric_log(_log_dir(tmp_path, LOG))
    assert [step for step, _ in rows] == [1, 2, 2, 2, 3, 4]
    assert rows[1][1] == {"loss": 2.25, "lr": 1e-3, "tokens_per_second_per_gpu": 2000.0}
    seconds, losses = common.step_times(rows, 500)
    assert seconds == [0.5, 0.25, 1.0]
    assert losses[:2] == [2.5, 2.25] and losses[2] != losses[2]  # nan
    assert common.metric_values(rows, "canary/seconds") == [3.25, 1.5]
    assert common.latest_values(rows, "scale/") == {
        "layers.4.attn.q_proj.weight": 2.0,
        "layers.4.sa_norm.scale": 0.0,
    }


def test_metric_log_needs_exactly_one_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="found 0"):
        common.read_metric_log(_log_dir(tmp_path / "none"))
    with pytest.raises(RuntimeError, match="found 2"):
        common.read_metric_log(_log_dir(tmp_path / "two", LOG, LOG))


def test_flops_full_adept_and_recompute() -> None:
    numbers = common.LayerNumbers(matmul=100, head=40, attention_width=2)
    A = 4 * (7 + 1) / 2 * 2  # = 16: seq 7, mean causal context 4
    full = common.flops_per_token(numbers, 10, 7, activation_checkpointing=True)
    assert full.model == 6 * (10 * 100 + 40) + 3 * 10 * A
    assert full.recompute == 10 * (2 * 100 + A)
    # 12 layers, trained copies at 9 and 11: forward everywhere, input gradients from 9 up
    # (3 layers), weight gradients for 2, head frozen.
    adept = common.flops_per_token(numbers, 12, 7, [11, 9])
    assert (
        adept.model == 2 * (12 * 100 + 40) + 2 * 40 + 2 * 3 * 100 + 2 * 2 * 100 + 12 * A + 2 * 3 * A
    )
    assert adept.recompute == 0.0
    # Every layer training but the head frozen: full minus the head's weight gradient.
    all_layers = common.flops_per_token(numbers, 10, 7, list(range(10)))
    assert full.model - all_layers.model == 2 * 40


def test_layer_numbers_of_a_built_decoder() -> None:
    arch = ModelArchitecture(
        family="qwen3", vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
        intermediate_dim=48, head_dim=16, max_seq_len=32, norm_eps=1e-6, rope_base=1e6,
        tie_word_embeddings=True,
    )  # fmt: skip
    numbers = common.layer_numbers(arch.build())
    # q and o: 32 x 64; k and v: 32 x 32; w1, w2, w3: 32 x 48.
    assert numbers == common.LayerNumbers(
        matmul=2 * 32 * 64 + 2 * 32 * 32 + 3 * 32 * 48, head=64 * 32, attention_width=64
    )


def test_write_hf_model_round_trip(tmp_path: Path) -> None:
    arch = ModelArchitecture(
        family="llama", vocab_size=64, num_layers=2, num_heads=2, num_kv_heads=1, embed_dim=16,
        intermediate_dim=24, head_dim=8, max_seq_len=32, norm_eps=1e-5, rope_base=5e5,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = arch.build()
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    out = common.write_hf_model(
        tmp_path / "model", model, arch, {"bos_token_id": None}, files=[tokenizer],
        extra_json={"pretrain.json": {"steps": 3}},
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "pretrain.json", "tokenizer.json",
    ]  # fmt: skip
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    loaded = HFCheckpointer(str(out), str(tmp_path / "unused")).load_state_dict()
    expected = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_provenance_records_command_code_and_machine() -> None:
    script = str(common.BENCH_DIR / "forgetting.py")
    record = common.provenance([script, "--tag", "_a b"])
    assert record["command"] == "python benchmarks/forgetting.py --tag '_a b'"
    assert record["torch"] == torch.__version__
    assert record["torch_threads"] == torch.get_num_threads()
    assert record["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    assert record["commit"] is None or len(record["commit"]) == 40
    line = common.provenance_line(record)
    assert line.startswith("provenance: commit ") and f"torch {torch.__version__}" in line
    assert record["date"] in line and record["cpu"] in line


def test_quick_results_stay_out_of_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert common.results_dir(quick=False) == common.RESULTS_DIR
    assert common.CACHE_DIR == common.BENCH_DIR / ".cache"  # gitignored
    monkeypatch.setattr(common, "CACHE_DIR", tmp_path / ".cache")
    assert common.results_dir(quick=True) == tmp_path / ".cache" / "quick_results"
    assert (tmp_path / ".cache" / "quick_results").is_dir()


def test_random_qwen3_has_the_timing_shape() -> None:
    model = common.random_qwen3(vocab_size=64, num_layers=3, dim=32, seq_len=16)
    assert len(model.layers) == 3
    # q, o: 32 x 32 (4 heads of 8); k, v: 32 x 16 (2 KV heads); w1, w2, w3: 32 x 96.
    assert common.layer_numbers(model) == common.LayerNumbers(
        matmul=2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 96, head=64 * 32, attention_width=32
    )


def test_the_header_reader_agrees_with_gguf(tmp_path: Path) -> None:
    """``common.gguf_metadata`` reads the keys GGUFReader reads, past arrays of every kind."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "é", "a b"] * 5)
    writer.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0])
    writer.add_uint32("llama.block_count", 3)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_float64("some.float", 1.5)
    writer.add_name("Tiny Llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    keys = ("general.architecture", "general.name")
    reader = gguf.GGUFReader(str(path))
    expected = {k: bytes(reader.fields[k].parts[reader.fields[k].data[0]]).decode() for k in keys}
    assert (
        common.gguf_metadata(path, keys)
        == expected
        == {
            "general.architecture": "llama",
            "general.name": "Tiny Llama",
        }
    )
    assert common.gguf_metadata(path, ("general.name", "absent.key")) == {
        "general.name": "Tiny Llama"
    }
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:40])  # inside the token array
    with pytest.raises(ValueError, match="ends early"):
        common.gguf_metadata(cut, ("general.name",))
