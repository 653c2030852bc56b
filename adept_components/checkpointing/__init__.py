"""Hugging Face checkpoint loading and atomic saving."""

from adept_components.checkpointing.hf_checkpointer import (
    HFCheckpointer,
    atomic_directory,
    check_state_dict_matches,
    write_safetensors_shards,
)

__all__ = [
    "HFCheckpointer",
    "atomic_directory",
    "check_state_dict_matches",
    "write_safetensors_shards",
]
