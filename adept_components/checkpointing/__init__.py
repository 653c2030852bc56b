"""Hugging Face checkpoint loading and atomic saving; trainable-only resume checkpoints."""

from adept_components.checkpointing.hf_checkpointer import (
    HFCheckpointer,
    check_state_dict_matches,
    write_safetensors_shards,
)
from adept_components.checkpointing.resume import (
    RESUME_FILE,
    TRAINING_STATE_FILE,
    TrainableCheckpointInfo,
    base_reference,
    check_base_reference,
    check_trainable_files,
    export_hf,
    is_trainable_checkpoint,
    load_trainable_checkpoint,
    read_trainable_tensors,
    save_trainable_checkpoint,
    trainable_names,
)

__all__ = [
    "HFCheckpointer",
    "RESUME_FILE",
    "TRAINING_STATE_FILE",
    "TrainableCheckpointInfo",
    "base_reference",
    "check_base_reference",
    "check_state_dict_matches",
    "check_trainable_files",
    "export_hf",
    "is_trainable_checkpoint",
    "load_trainable_checkpoint",
    "read_trainable_tensors",
    "save_trainable_checkpoint",
    "trainable_names",
    "write_safetensors_shards",
]
