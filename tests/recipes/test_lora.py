"""``method=lora`` through the recipe on the tiny demo: what trains, exact resume, the merged HF
checkpoint and its PEFT adapter, ``adept-cpt export`` of a step, and FSDP2 on two ranks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import adept_cpt
import peft
import pytest
import torch
import transformers
from conftest import hf_logits, rel_err, tune_run
from safetensors.torch import load_file

from adept_components.checkpointing import TrainableCheckpointInfo, read_trainable_tensors
from adept_components.cli import main as cli_main
from adept_components.config import asset_path
from adept_components.trainable import ADAPTER_DIR, LORA_TARGETS

BASE = Path(asset_path("demo/base_model"))
LORA = ["method=lora", "optimizer.lr=2e-3", "canary.every_n_steps=0", "max_steps=4"]


def run(out: Path, *overrides: str) -> None:
    assert adept_cpt.main(["--config", "tiny_demo", f"output_dir={out}", *LORA, *overrides]) == 0


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "straight"
    run(out, "save_every_n_steps=2")
    return out


def test_lora_trains_adapters_only_and_saves_a_merged_model_and_its_adapter(
    straight: Path, tmp_path: Path
) -> None:
    step = straight / "checkpoints" / "step_2"
    info = TrainableCheckpointInfo.read(step)
    assert info.trainable["kind"] == "adapters" and info.trainable["rank"] == 20  # rank: match
    assert sorted(read_trainable_tensors(step)) == sorted(info.tensors)
    assert all(".lora_a." in name or ".lora_b." in name for name in info.tensors)
    assert len(info.tensors) == 8 * len(LORA_TARGETS) * 2

    final, base = tensors(straight / "final"), tensors(BASE)
    assert final.keys() == base.keys()  # L layers, the base's names: adapters merged
    moved = {k for k in base if not torch.equal(final[k], base[k])}
    adapted = {f".{t}.weight" for t in LORA_TARGETS}
    assert moved and all(any(k.endswith(s) for s in adapted) for k in moved), moved
    config = json.loads((straight / "final" / "config.json").read_text())
    assert config["num_hidden_layers"] == 8
    assert not (straight / "final" / "adept_expansion.json").exists()

    tokens = torch.randint(0, 2048, (1, 40), generator=torch.Generator().manual_seed(0))
    merged = hf_logits(straight / "final", tokens)
    reference = transformers.AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    adapter = straight / "final" / ADAPTER_DIR
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 20
    with torch.no_grad():
        logits = peft.PeftModel.from_pretrained(reference, adapter).eval()(tokens).logits
    assert rel_err(logits, merged) <= 1e-5

    # adept-cpt export of the step: its merged model and adapter, as a final save would be.
    assert cli_main(["export", str(step), str(tmp_path / "step_2")]) == 0
    exported = tensors(tmp_path / "step_2")
    assert exported.keys() == base.keys()
    assert (tmp_path / "step_2" / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    assert any(not torch.equal(exported[k], final[k]) for k in moved)  # step 2, not step 4


def test_lora_resume_is_exact(straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    run(out, "save_every_n_steps=2", "stop_after_steps=2")
    assert not (out / "final").exists()
    with pytest.raises(SystemExit):  # other adapters than the checkpoint's: refused
        run(out, "save_every_n_steps=2", "resume_from_checkpoint=true", "lora.rank=8")
    run(out, "save_every_n_steps=2", "resume_from_checkpoint=true")
    resumed, final = tensors(out / "final"), tensors(straight / "final")
    assert all(torch.equal(resumed[k], final[k]) for k in final)
    adapter = load_file(str(out / "final" / ADAPTER_DIR / "adapter_model.safetensors"))
    expected = load_file(str(straight / "final" / ADAPTER_DIR / "adapter_model.safetensors"))
    assert adapter.keys() == expected.keys()
    assert all(torch.equal(adapter[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_lora_on_two_gloo_ranks_matches_one_process(straight: Path, tmp_path: Path) -> None:
    """FSDP2, batch 2 on each of two ranks == one process with batch 2 and two micro-batches."""
    common = [*LORA, "batch_size=2", "save_every_n_steps=0"]
    two = ["--nproc_per_node", "2", "adept_cpt", "--config", "tiny_demo"]
    result = tune_run([*two, f"output_dir={tmp_path / 'two'}", *common], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert adept_cpt.main(
        ["--config", "tiny_demo", f"output_dir={tmp_path / 'one'}", *common,
         "gradient_accumulation_steps=2"]
    ) == 0  # fmt: skip
    one, two_ranks = tensors(tmp_path / "one" / "final"), tensors(tmp_path / "two" / "final")
    for key, tensor in one.items():  # the ranks reduce gradients in another order
        torch.testing.assert_close(two_ranks[key], tensor, rtol=0, atol=2e-5, msg=key)
    adapters = [
        load_file(str(tmp_path / name / "final" / ADAPTER_DIR / "adapter_model.safetensors"))
        for name in ("one", "two")
    ]
    for key, tensor in adapters[0].items():
        torch.testing.assert_close(adapters[1][key], tensor, rtol=1e-4, atol=2e-5, msg=key)
    shutil.rmtree(tmp_path / "two")
