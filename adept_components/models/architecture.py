"""Architecture numbers of a decoder, read from and written to Hugging Face ``config.json``.

One record (``ModelArchitecture``) links the three places the numbers live: the HF config a
checkpoint ships, the torchtune module we build, and the config we write next to a saved
checkpoint. The saved config is derived from the *module* (``architecture_of``), never copied
from the input, so a model that gained layers is described with its true depth.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from torch import nn
from torchtune.models.llama3 import llama3
from torchtune.models.llama3_1._position_embeddings import Llama3ScaledRoPE
from torchtune.models.llama3_2 import llama3_2
from torchtune.modules import TiedLinear, TransformerDecoder

from adept_components.models.qwen3 import Qwen3Attention, qwen3

Family = Literal["qwen3", "llama"]
_HF_MODEL_TYPES: dict[str, Family] = {"qwen3": "qwen3", "llama": "llama"}
_HF_ARCHITECTURES: dict[Family, str] = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
# torchtune's Llama3ScaledRoPE fixes these three; a config asking for others cannot be built.
_LLAMA3_ROPE_FIXED = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclasses.dataclass(frozen=True)
class ModelArchitecture:
    """The numbers that define a Qwen3 or Llama 3 decoder.

    Attributes:
        family (str): ``"qwen3"`` or ``"llama"``.
        vocab_size (int): number of tokens.
        num_layers (int): decoder layers (HF ``num_hidden_layers``).
        num_heads (int): query heads.
        num_kv_heads (int): key/value heads.
        embed_dim (int): model width (HF ``hidden_size``).
        intermediate_dim (int): MLP width (HF ``intermediate_size``).
        head_dim (int): per-head width.
        max_seq_len (int): longest sequence (HF ``max_position_embeddings``).
        norm_eps (float): RMSNorm epsilon.
        rope_base (float): RoPE theta.
        tie_word_embeddings (bool): output head shares the embedding matrix.
        rope_scale_factor (float | None): Llama 3.1/3.2 RoPE scaling factor; None = unscaled.
    """

    family: Family
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
    rope_scale_factor: float | None = None

    def build(self, max_seq_len: int | None = None) -> TransformerDecoder:
        """Build the torchtune decoder (random init) for these numbers.

        Args:
            max_seq_len (int | None): RoPE cache length; defaults to ``self.max_seq_len``.
                Training at 4k does not need a 40k cache.

        Returns:
            TransformerDecoder: the model.
        """
        seq = max_seq_len or self.max_seq_len
        if self.family == "qwen3":
            return qwen3(
                vocab_size=self.vocab_size,
                num_layers=self.num_layers,
                num_heads=self.num_heads,
                num_kv_heads=self.num_kv_heads,
                embed_dim=self.embed_dim,
                intermediate_dim=self.intermediate_dim,
                max_seq_len=seq,
                head_dim=self.head_dim,
                norm_eps=self.norm_eps,
                rope_base=self.rope_base,
                tie_word_embeddings=self.tie_word_embeddings,
            )
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(
                f"Llama needs head_dim * num_heads == hidden_size, got {self.head_dim} * "
                f"{self.num_heads} != {self.embed_dim}"
            )
        common = dict(
            vocab_size=self.vocab_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            embed_dim=self.embed_dim,
            max_seq_len=seq,
            intermediate_dim=self.intermediate_dim,
            norm_eps=self.norm_eps,
            rope_base=self.rope_base,
        )
        if self.rope_scale_factor is not None:
            # torchtune's Llama 3.2 component builder = Llama 3.1 blocks + optional tying.
            return llama3_2(
                **common,
                scale_factor=self.rope_scale_factor,
                tie_word_embeddings=self.tie_word_embeddings,
            )
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=true needs Llama 3 rope scaling (Llama 3.2)")
        return llama3(**common)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelArchitecture:
        """Read the numbers from a parsed HF ``config.json``.

        Accepts both the classic (``rope_theta``, ``rope_scaling``) and the transformers 5
        (``rope_parameters``) spellings.

        Args:
            config (dict): the parsed config.json.

        Returns:
            ModelArchitecture: the numbers.

        Raises:
            ValueError: unknown ``model_type``, a missing field, or a RoPE variant we cannot build.
        """
        model_type = config.get("model_type")
        if model_type not in _HF_MODEL_TYPES:
            raise ValueError(
                f"config.json model_type={model_type!r} is not supported "
                f"(supported: {sorted(_HF_MODEL_TYPES)})"
            )
        family = _HF_MODEL_TYPES[model_type]
        required = [
            "vocab_size",
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_size",
            "intermediate_size",
        ]
        missing = [k for k in required if k not in config]
        if missing:
            raise ValueError(f"config.json lacks required field(s) {missing}")
        heads = config["num_attention_heads"]
        rope_params = config.get("rope_parameters") or {}
        scaling = config.get("rope_scaling") or (
            rope_params if rope_params.get("rope_type", "default") != "default" else None
        )
        scale_factor = None
        if scaling is not None:
            rope_type = scaling.get("rope_type", scaling.get("type"))
            if family != "llama" or rope_type != "llama3":
                raise ValueError(
                    f"config.json rope scaling {rope_type!r} is not supported for {family}"
                )
            for key, expected in _LLAMA3_ROPE_FIXED.items():
                if float(scaling.get(key, expected)) != expected:
                    raise ValueError(
                        f"config.json rope scaling {key}={scaling[key]} (supported: {expected})"
                    )
            scale_factor = float(scaling["factor"])
        return cls(
            family=family,
            vocab_size=config["vocab_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            embed_dim=config["hidden_size"],
            intermediate_dim=config["intermediate_size"],
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            max_seq_len=config.get("max_position_embeddings", 4096),
            norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_base=float(config.get("rope_theta") or rope_params.get("rope_theta") or 10_000.0),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_scale_factor=scale_factor,
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
        ``layer_sources[i]``.

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
        config.update(
            model_type=self.family,
            architectures=[_HF_ARCHITECTURES[self.family]],
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
        if "rope_parameters" in config:
            config["rope_parameters"] = {**config["rope_parameters"], "rope_theta": self.rope_base}
        else:
            config["rope_theta"] = self.rope_base
        if self.rope_scale_factor is not None and "rope_parameters" not in config:
            config["rope_scaling"] = {
                **(config.get("rope_scaling") or {}),
                "rope_type": "llama3",
                "factor": self.rope_scale_factor,
                **_LLAMA3_ROPE_FIXED,
            }
        return config


def architecture_of(model: nn.Module) -> ModelArchitecture:
    """Read the architecture off a built torchtune decoder (after any expansion).

    Args:
        model (nn.Module): a decoder built by this package.

    Returns:
        ModelArchitecture: its numbers.
    """
    layer = model.layers[0]
    attn, rope = layer.attn, layer.attn.pos_embeddings
    scaled = isinstance(rope, Llama3ScaledRoPE)
    return ModelArchitecture(
        family="qwen3" if isinstance(attn, Qwen3Attention) else "llama",
        vocab_size=model.tok_embeddings.num_embeddings,
        num_layers=len(model.layers),
        num_heads=attn.num_heads,
        num_kv_heads=attn.num_kv_heads,
        embed_dim=model.tok_embeddings.embedding_dim,
        intermediate_dim=layer.mlp.w1.out_features,
        head_dim=attn.head_dim,
        max_seq_len=model.max_seq_len,
        norm_eps=layer.sa_norm.eps,
        rope_base=float(rope.base),
        tie_word_embeddings=isinstance(model.output, TiedLinear),
        rope_scale_factor=float(rope.scale_factor) if scaled else None,
    )


def read_hf_config(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Parse ``config.json`` of an HF model directory.

    Args:
        checkpoint_dir (str | Path): the directory ``tune download`` wrote.

    Returns:
        dict: the parsed config.

    Raises:
        FileNotFoundError: the directory or its config.json is missing.
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
    return json.loads(config_file.read_text())


def model_from_hf_config(checkpoint_dir: str, max_seq_len: int | None = None) -> TransformerDecoder:
    """Build the decoder a Hugging Face model directory describes (any size, Qwen3 or Llama 3).

    The YAML builder for checkpoints that have no named builder: tiny test models, sizes in
    between, or models that were already expanded.

    Args:
        checkpoint_dir (str): HF model directory containing config.json.
        max_seq_len (int | None): RoPE cache length; default: the config's.

    Returns:
        TransformerDecoder: the model, randomly initialised (load weights with the checkpointer).
    """
    config = read_hf_config(checkpoint_dir)
    return ModelArchitecture.from_hf_config(config).build(max_seq_len)
