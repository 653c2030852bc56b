"""Hugging Face checkpoint loading and atomic saving."""

from adept_components.checkpointing.hf_checkpointer import (
    HFCheckpointer,
    check_state_dict_matches,
    write_safetensors_shards,
)

__all__ = [
    "HFCheckpointer",
    "check_state_dict_matches",
    "write_safetensors_shards",
]
