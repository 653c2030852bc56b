"""S2.1 unit param groups: one per trainable tensor of the copies, built by name."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_QWEN3, save_hf_model
from optim_fixtures import COPIES, LLAMA_LAYER_UNITS, QWEN3_LAYER_UNITS, tiny_qwen3
from torchtune import training
from torchtune.modules import TransformerSelfAttentionLayer

from adept_components.models import model_from_hf_config
from adept_components.optim import (
    clean_param_name,
    unit_importance_by_name,
    unit_kind,
    unit_name,
    unit_param_groups,
)
from adept_components.trainable import freeze_all_but


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's tiny Qwen3, written once per module."""
    return save_hf_model(tmp_path_factory.mktemp("qwen3"), TINY_QWEN3)


def _expected(layer_units: tuple[str, ...], layers: tuple[int, ...]) -> list[str]:
    return [f"layers.{layer}.{unit}" for layer in layers for unit in layer_units]


def test_qwen3_eleven_units_per_copy(qwen3_dir: Path) -> None:
    model = tiny_qwen3(qwen3_dir)
    groups = unit_param_groups(model, COPIES)
    assert [g["name"] for g in groups] == _expected(QWEN3_LAYER_UNITS, COPIES)
    assert len(groups) == 11 * len(COPIES)
    params = dict(model.named_parameters())
    for group in groups:
        assert set(group) == {"params", "name"}
        assert len(group["params"]) == 1
        assert group["params"][0] is params[group["name"]]


def test_llama_nine_units_per_copy(tiny_llama_dir: Path) -> None:
    model = model_from_hf_config(str(tiny_llama_dir))
    freeze_all_but(model, [0, 2])
    groups = unit_param_groups(model, [0, 2])
    assert [g["name"] for g in groups] == _expected(LLAMA_LAYER_UNITS, (0, 2))
    assert len(groups) == 18


def test_frozen_tensor_of_a_copy_is_left_out(qwen3_dir: Path) -> None:
    model = tiny_qwen3(qwen3_dir)
    model.layers[3].attn.k_norm.scale.requires_grad_(False)
    names = [g["name"] for g in unit_param_groups(model, COPIES)]
    assert names == [
        n for n in _expected(QWEN3_LAYER_UNITS, COPIES) if n != "layers.3.attn.k_norm.scale"
    ]


def test_activation_checkpointing_keeps_names_and_tensors(qwen3_dir: Path) -> None:
    model = tiny_qwen3(qwen3_dir)
    plain = unit_param_groups(model, COPIES)
    training.set_activation_checkpointing(model, auto_wrap_policy={TransformerSelfAttentionLayer})
    raw = [n for n, _ in model.named_parameters()]
    assert "layers.1._checkpoint_wrapped_module.attn.q_proj.weight" in raw  # really wrapped
    wrapped = unit_param_groups(model, COPIES)
    assert [g["name"] for g in wrapped] == [g["name"] for g in plain]
    for a, b in zip(wrapped, plain, strict=True):
        assert a["params"][0] is b["params"][0]


def test_trainable_parameter_outside_the_layers_is_refused(qwen3_dir: Path) -> None:
    model = tiny_qwen3(qwen3_dir)
    model.norm.scale.requires_grad_(True)
    with pytest.raises(ValueError, match=r"outside trainable_layers=\[1, 3\].*norm\.scale"):
        unit_param_groups(model, COPIES)


def test_no_trainable_parameters_is_refused(qwen3_dir: Path) -> None:
    model = tiny_qwen3(qwen3_dir)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable copies"):
        unit_param_groups(model, COPIES)


def test_layer_list_is_validated(qwen3_dir: Path) -> None:
    model = tiny_qwen3(qwen3_dir)
    with pytest.raises(ValueError, match=r"trainable_layers=\[1, 7\] but the model has 4 layers"):
        unit_param_groups(model, [1, 7])
    with pytest.raises(ValueError, match="repeats"):
        unit_param_groups(model, [1, 1])
    with pytest.raises(ValueError, match=r"layers \[2\] have no trainable parameter"):
        unit_param_groups(model, [1, 2, 3])


def test_unit_kind_and_names() -> None:
    norms = ["sa_norm.scale", "mlp_norm.scale", "attn.q_norm.scale", "attn.k_norm.scale"]
    for local in norms:
        assert unit_kind(f"layers.5.{local}") == "norm"
    for local in (
        "attn.q_proj.weight",
        "attn.output_proj.weight",
        "mlp.w1.weight",
        "mlp.w2.weight",
    ):
        assert unit_kind(f"layers.5.{local}") == "matrix"
    assert unit_kind("layers.5._checkpoint_wrapped_module.sa_norm.scale") == "norm"
    assert (
        clean_param_name("_orig_mod.layers.2._checkpoint_wrapped_module.mlp.w3.weight")
        == "layers.2.mlp.w3.weight"
    )
    assert (
        unit_name(4, "_checkpoint_wrapped_module.attn.v_proj.weight")
        == "layers.4.attn.v_proj.weight"
    )
    scores = {1: {"attn.q_proj.weight": 0.5, "sa_norm.scale": 2.0}, 2: {"mlp.w1.weight": 9.0}}
    assert unit_importance_by_name(scores, [1]) == {
        "layers.1.attn.q_proj.weight": 0.5,
        "layers.1.sa_norm.scale": 2.0,
    }
    with pytest.raises(ValueError, match=r"no scores for layers \[3\]"):
        unit_importance_by_name(scores, [1, 3])


_FSDP2_SCRIPT = """
import json, os, sys
sys.path[:0] = [sys.argv[2], sys.argv[3]]
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from optim_fixtures import lm_loss, tiny_qwen3
from adept_components.optim import UnitScaledScheduler, unit_optimizer, unit_param_groups
from torch.optim.lr_scheduler import LambdaLR

dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[4]}", rank=0, world_size=1)
model = tiny_qwen3(__import__("pathlib").Path(sys.argv[1]))
before = unit_param_groups(model, [1, 3])
mesh = init_device_mesh("cpu", (1,))
for layer in model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
optimizer = unit_optimizer(model, [1, 3], lr=1e-3)
scheduler = UnitScaledScheduler(optimizer, LambdaLR(optimizer, lambda step: 1.0))
names = [g["name"] for g in optimizer.param_groups]
scheduler.set_scales({n: (0.0 if i == 0 else 1.0) for i, n in enumerate(names)}, step=0)
first = optimizer.param_groups[0]["params"][0].full_tensor().clone()
lm_loss(model, seed=0).backward()
optimizer.step()
print(json.dumps({
    "names": names,
    "same_names": names == [g["name"] for g in before],
    "replaced": all(g["params"][0] is not b["params"][0] for g, b in zip(optimizer.param_groups, before)),
    "dtensor": all(isinstance(g["params"][0], DTensor) for g in optimizer.param_groups),
    "paused_unchanged": bool((optimizer.param_groups[0]["params"][0].full_tensor() == first).all()),
}))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fsdp2_groups_are_built_by_name_after_sharding(qwen3_dir: Path, tmp_path: Path) -> None:
    """FSDP2 swaps every parameter for a DTensor: groups built after sharding hold the new ones.

    Runs in a subprocess (one gloo rank on CPU) so no process group leaks into other tests.
    """
    script = tmp_path / "fsdp2_groups.py"
    script.write_text(textwrap.dedent(_FSDP2_SCRIPT))
    tests_dir = Path(__file__).resolve().parent
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(qwen3_dir),
            str(tests_dir.parent),
            str(tests_dir),
            str(_free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["names"] == _expected(QWEN3_LAYER_UNITS, COPIES)
    assert report["same_names"] and report["replaced"] and report["dtensor"]
    assert report["paused_unchanged"]  # the w = 0 unit did not move under FSDP2 either
