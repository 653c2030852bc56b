"""Architecture numbers of a decoder, read from and written to Hugging Face ``config.json``.

One record (``ModelArchitecture``) links the three places the numbers live: the HF config a
checkpoint ships, the torchtune module we build, and the config we write next to a saved
checkpoint. The saved config is derived from the *module* (``architecture_of``), never copied
from the input, so a model that gained layers is described with its true depth.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

from torch import nn
from torchtune.modules import TiedLinear, TransformerDecoder

from adept_components.models.family import (
    FAMILIES,
    ModelFamily,
    family_for_model_type,
    family_of,
)
from adept_components.models.gemma3 import LinearRopeScaling
from adept_components.models.llama3 import Llama3RopeScaling


@dataclasses.dataclass(frozen=True)
class ModelArchitecture:
    """The numbers that define a decoder of one of the families (``models.family``).

    Attributes:
        family (str): ``"qwen3"``, ``"llama"`` or ``"gemma3"`` (a key of ``FAMILIES``).
        vocab_size (int): number of tokens.
        num_layers (int): decoder layers (HF ``num_hidden_layers``).
        num_heads (int): query heads.
        num_kv_heads (int): key/value heads.
        embed_dim (int): model width (HF ``hidden_size``).
        intermediate_dim (int): MLP width (HF ``intermediate_size``).
        head_dim (int): per-head width.
        max_seq_len (int): longest sequence (HF ``max_position_embeddings``).
        norm_eps (float): RMSNorm epsilon.
        rope_base (float): RoPE theta (Gemma 3: of the full-attention layers).
        tie_word_embeddings (bool): output head shares the embedding matrix.
        rope_scaling (Llama3RopeScaling | LinearRopeScaling | None): Llama 3 scaling, or
            Gemma 3's linear scaling of the full-attention layers; None = plain RoPE.
        layer_types (tuple[str, ...] | None): Gemma 3: per layer ``sliding_attention`` or
            ``full_attention``; None: every layer attends globally.
        sliding_window (int | None): Gemma 3: positions a sliding layer sees.
        local_rope_base (float | None): Gemma 3: RoPE theta of the sliding layers.
        query_pre_attn_scalar (float | None): Gemma 3: scores scale by its ``** -0.5``.
    """

    family: str
    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    head_dim: int
    max_seq_len: int
    norm_eps: float
    rope_base: float
    tie_word_embeddings: bool
    rope_scaling: Llama3RopeScaling | LinearRopeScaling | None = None
    layer_types: tuple[str, ...] | None = None
    sliding_window: int | None = None
    local_rope_base: float | None = None
    query_pre_attn_scalar: float | None = None

    @property
    def family_record(self) -> ModelFamily:
        """The family's record (builder, key map, norms, sequence conventions)."""
        return FAMILIES[self.family]

    def common_numbers(self, max_seq_len: int | None = None) -> dict[str, Any]:
        """The builder arguments every family takes (the family adds its own)."""
        return {
            "vocab_size": self.vocab_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "embed_dim": self.embed_dim,
            "intermediate_dim": self.intermediate_dim,
            "max_seq_len": max_seq_len or self.max_seq_len,
            "head_dim": self.head_dim,
            "norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
        }

    def build(self, max_seq_len: int | None = None) -> TransformerDecoder:
        """Build the torchtune decoder (random init) for these numbers.

        Args:
            max_seq_len (int | None): RoPE cache length; defaults to ``self.max_seq_len``.
                Training at 4k does not need a 40k cache.

        Returns:
            TransformerDecoder: the model.
        """
        return self.family_record.build(self, max_seq_len or self.max_seq_len)

    def expanded(self, layer_sources: list[int]) -> ModelArchitecture:
        """The architecture after expansion: one layer per entry of ``layer_sources``.

        Per-layer fields are re-indexed: new layer ``i`` takes base layer
        ``layer_sources[i]``'s (a copy keeps its source's attention kind and RoPE base).

        Args:
            layer_sources (list[int]): for each new layer, the base layer it descends from.

        Returns:
            ModelArchitecture: the expanded model's numbers.

        Raises:
            ValueError: a source index out of range.
        """
        bad = [i for i in layer_sources if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(
                f"layer_sources {bad} are not layers of a {self.num_layers}-layer model"
            )
        types = self.layer_types
        return dataclasses.replace(
            self,
            num_layers=len(layer_sources),
            layer_types=None if types is None else tuple(types[i] for i in layer_sources),
        )

    @classmethod
    def from_hf_config(
        cls, config: dict[str, Any], source: str = "config.json"
    ) -> ModelArchitecture:
        """Read the numbers from a parsed HF ``config.json``.

        Accepts both the transformers 4.x (``rope_theta``, ``rope_scaling``, Gemma 3's
        ``rope_local_base_freq`` and ``sliding_window_pattern``) and the transformers 5
        (``rope_parameters``, per layer type for Gemma 3) spellings.

        Args:
            config (dict): the parsed config.json.
            source (str): where it came from, named in every error.

        Returns:
            ModelArchitecture: the numbers.

        Raises:
            ValueError: unknown ``model_type``, a missing field, or a variant we cannot build
                (unknown RoPE scaling, biases, another activation, softcapping, unknown
                layer types), in one line naming the field.
        """
        family = family_for_model_type(config.get("model_type"), source)
        required = [
            "vocab_size",
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_size",
            "intermediate_size",
        ]
        missing = [k for k in required if k not in config]
        if missing:
            raise ValueError(f"{source} lacks required field(s) {missing}")
        heads = config["num_attention_heads"]
        return cls(
            family=family.name,
            vocab_size=config["vocab_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            embed_dim=config["hidden_size"],
            intermediate_dim=config["intermediate_size"],
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            max_seq_len=config.get("max_position_embeddings", 4096),
            norm_eps=_float32_repr(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", family.tie_default)),
            **family.read_hf(config, source),
        )

    def to_hf_config(
        self,
        base: dict[str, Any] | None = None,
        layer_sources: list[int] | None = None,
    ) -> dict[str, Any]:
        """Write these numbers into an HF config dict.

        Fields the numbers do not cover (token ids, ``torch_dtype``, ``architectures`` …) are
        kept from ``base``. Per-layer lists of ``base`` (``layer_types`` …) are re-indexed so
        they stay as long as the layer count: new layer ``i`` takes the entry of base layer
        ``layer_sources[i]``; the family then writes its own fields from the numbers.

        Args:
            base (dict | None): the input checkpoint's config.json, if any.
            layer_sources (list[int] | None): for each layer of this model, the base layer it
                descends from; None when the depth is unchanged.

        Returns:
            dict: the config to save.

        Raises:
            ValueError: ``layer_sources`` has the wrong length, or the depth changed and
                per-layer lists cannot be re-indexed without it.
        """
        config = dict(base or {})
        base_layers = config.get("num_hidden_layers", self.num_layers)
        if layer_sources is not None and len(layer_sources) != self.num_layers:
            raise ValueError(
                f"layer_sources has {len(layer_sources)} entries for {self.num_layers} layers"
            )
        if layer_sources is None and base_layers != self.num_layers:
            raise ValueError(
                f"the model has {self.num_layers} layers, its base config {base_layers}: "
                "pass layer_sources to re-index per-layer fields"
            )
        for key, value in list(config.items()):
            if isinstance(value, list) and len(value) == base_layers and layer_sources is not None:
                config[key] = [value[src] for src in layer_sources]
        family = self.family_record
        config.update(
            model_type=config.get("model_type")
            if config.get("model_type") in family.hf_model_types
            else family.hf_model_types[0],
            architectures=[family.hf_architecture],
            vocab_size=self.vocab_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            hidden_size=self.embed_dim,
            intermediate_size=self.intermediate_dim,
            head_dim=self.head_dim,
            max_position_embeddings=config.get("max_position_embeddings", self.max_seq_len),
            rms_norm_eps=self.norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
        )
        family.write_hf(self, config)
        return config


def _float32_repr(value: float) -> float:
    """The shortest decimal with the same float32 value.

    GGUF-derived configs store eps 1e-5 as its float32, 9.99999974738e-06; the model computes
    in float32 either way, so the saved config can say 1e-05. Other values are kept as given.
    """
    value = float(value)
    short = float(f"{value:.7g}")
    as_float32 = struct.Struct("f")
    same = as_float32.unpack(as_float32.pack(short)) == as_float32.unpack(as_float32.pack(value))
    return short if same else value


def architecture_of(model: nn.Module) -> ModelArchitecture:
    """Read the architecture off a built torchtune decoder (after any expansion).

    Args:
        model (nn.Module): a decoder built by this package (or torchtune's Llama builders).

    Returns:
        ModelArchitecture: its numbers.

    Raises:
        ValueError: the decoder is of no known family (``family.family_of``).
    """
    family = family_of(model)
    layer = model.layers[0]
    attn = layer.attn
    return ModelArchitecture(
        family=family.name,
        vocab_size=model.tok_embeddings.num_embeddings,
        num_layers=len(model.layers),
        num_heads=attn.num_heads,
        num_kv_heads=attn.num_kv_heads,
        embed_dim=model.tok_embeddings.embedding_dim,
        intermediate_dim=layer.mlp.w1.weight.shape[0],  # nn.Linear or an adapted LoRALinear
        head_dim=attn.head_dim,
        max_seq_len=model.max_seq_len,
        norm_eps=layer.sa_norm.eps,
        tie_word_embeddings=isinstance(model.output, TiedLinear),
        **family.read_module(model),
    )


def read_hf_config(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Parse ``config.json`` of an HF model directory.

    Args:
        checkpoint_dir (str | Path): the directory ``tune download`` wrote.

    Returns:
        dict: the parsed config.

    Raises:
        FileNotFoundError: the directory or its config.json is missing.
        ValueError: config.json is not valid JSON or not a JSON object.
    """
    path = Path(checkpoint_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"checkpoint_dir {str(path)!r} does not exist: point checkpointer.checkpoint_dir at the "
            "directory `tune download <model> --output-dir DIR` wrote"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} is missing: checkpointer.checkpoint_dir must be a Hugging Face model "
            "directory with config.json"
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{config_file} is not a UTF-8 text file") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{config_file} holds a JSON {type(config).__name__}, not an object of model fields"
        )
    return config


def config_path(checkpoint_dir: str | Path) -> str:
    """The ``config.json`` path of a model directory, as errors name it."""
    return str(Path(checkpoint_dir).expanduser() / "config.json")


def model_from_hf_config(checkpoint_dir: str, max_seq_len: int | None = None) -> TransformerDecoder:
    """Build the decoder a Hugging Face model directory describes (any size, any family).

    The YAML builder for checkpoints that have no named builder: tiny test models, sizes in
    between, or models that were already expanded.

    Args:
        checkpoint_dir (str): HF model directory containing config.json.
        max_seq_len (int | None): RoPE cache length; default: the config's.

    Returns:
        TransformerDecoder: the model, randomly initialised (load weights with the checkpointer).
    """
    config = read_hf_config(checkpoint_dir)
    return ModelArchitecture.from_hf_config(config, config_path(checkpoint_dir)).build(max_seq_len)
