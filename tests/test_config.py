"""Config names, overrides and the ``adept-cpt ls`` / ``cp`` commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from torchtune._recipe_registry import get_all_recipes

from adept_components import cli
from adept_components.config import ConfigError, apply_overrides, available_configs, load_config


def test_shipped_names_never_shadowed_by_torchtune() -> None:
    """`tune run` swaps a --config equal to a torchtune config name for torchtune's YAML."""
    torchtune_names = {c.name for r in get_all_recipes() for c in r.configs}
    ours = set(available_configs())
    assert ours and not ours & torchtune_names


def test_overrides() -> None:
    cfg = OmegaConf.create({"a": 1, "b": {"c": "x"}})
    cfg = apply_overrides(cfg, ["a=2", "b.c=y", "+b.d=3", "~a"])
    assert OmegaConf.to_container(cfg) == {"b": {"c": "y", "d": 3}}
    with pytest.raises(ConfigError, match="Did you mean b.c"):
        apply_overrides(cfg, ["b.cc=1"])
    with pytest.raises(ConfigError, match="malformed override 'a=b=c'"):
        apply_overrides(cfg, ["a=b=c"])
    with pytest.raises(ConfigError, match="malformed override 'flag'"):
        apply_overrides(cfg, ["flag"])


def test_load_config_by_path_and_name(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: /tmp/x\nseed: 1\n")
    assert load_config(["--config", str(path), "seed=2"]).seed == 2
    name = available_configs()[0]
    assert load_config(["--config", name]).output_dir
    with pytest.raises(ConfigError, match="missing --config"):
        load_config(["seed=2"])


def test_ls_and_cp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ls"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in available_configs())
    name = available_configs()[0]
    assert cli.main(["cp", name, str(tmp_path / "mine.yaml")]) == 0
    assert (tmp_path / "mine.yaml").read_text().startswith("#")
    assert cli.main(["cp", name, str(tmp_path / "mine.yaml")]) == 2  # no silent overwrite
    assert cli.main(["cp", "nope", str(tmp_path / "x.yaml")]) == 2


def test_overrides_index_into_lists() -> None:
    """``probe.parts.0.num_samples=8``: a path through a list sets one field of one entry."""
    cfg = OmegaConf.create(
        {"probe": {"parts": [{"source": "a.txt", "num_samples": 32}, {"source": "b.jsonl"}]}}
    )
    cfg = apply_overrides(cfg, ["probe.parts.0.num_samples=8", "probe.parts.1.source=c.jsonl"])
    assert OmegaConf.to_container(cfg) == {
        "probe": {"parts": [{"source": "a.txt", "num_samples": 8}, {"source": "c.jsonl"}]}
    }
    with pytest.raises(ConfigError, match="no key 'probe.parts.2.source'"):
        apply_overrides(cfg, ["probe.parts.2.source=d.txt"])
