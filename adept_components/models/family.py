"""One record per model family: everything that differs between Qwen3, Llama and Gemma 3.

litgpt keeps every architectural difference as a field of one ``Config``; here a
``ModelFamily`` record plays that part for what is *not* a number of ``ModelArchitecture``:
which HF ``model_type`` it reads, how its config.json is parsed and written, its HF class and
tensor names, how the builder assembles it, which of a layer's modules are norms, which
tensors write into the residual stream (zeroed in a copy) and which norms gate a branch's
output, and whether every sequence must start with ``<bos>``. The builder
(``ModelArchitecture.build``), the HF conversion (``convert_weights``), the expansion and its
init (``expansion``), the unit grouping (``optim.unit_groups.unit_kind``) and the recipe's
data checks all read it. A new family is a record (plus its modules if torchtune lacks them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn
from torchtune.models.llama3_1 import Llama3ScaledRoPE
from torchtune.modules import MultiHeadAttention, TransformerDecoder

from adept_components._torchtune import LLAMA_FROM_HF, QWEN2_FROM_HF
from adept_components.models.gemma3 import (
    FULL,
    SLIDING,
    Gemma3Attention,
    LinearRopeScaling,
    LinearScaledRoPE,
    check_layer_types,
    gemma3,
    interleaved_layer_types,
)
from adept_components.models.llama3 import Llama3RopeScaling, llama
from adept_components.models.qwen3 import Qwen3Attention, qwen3

if TYPE_CHECKING:
    from adept_components.models.architecture import ModelArchitecture

# Tensors of a layer that write into the residual stream (HF o_proj and down_proj).
RESIDUAL_WRITERS: tuple[str, ...] = ("attn.output_proj.", "mlp.w2.")
_PRE_NORMS = ("sa_norm", "mlp_norm")
_QK_NORMS = ("q_norm", "k_norm")


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """What a model family is, beyond its numbers.

    Attributes:
        name (str): the family's name in ``ModelArchitecture.family``.
        hf_model_types (tuple[str, ...]): config.json ``model_type`` values it reads.
        hf_architecture (str): the transformers class a saved config names.
        attention_class (type[nn.Module]): its attention module; ``architecture_of`` tells a
            built model's family by it (most specific class first).
        build (Callable): ``build(architecture, max_seq_len) -> TransformerDecoder``.
        read_hf (Callable): ``read_hf(config, source) -> dict`` of the family's own
            ``ModelArchitecture`` fields (RoPE variant, layer kinds ...), refusing variants
            the builder does not have with one line naming the field.
        write_hf (Callable): ``write_hf(architecture, config)`` writes those fields back.
        read_module (Callable): ``read_module(model) -> dict`` of the same fields, read off a
            built decoder (``architecture_of``): its RoPE, windows and scales.
        tie_default (bool): ``tie_word_embeddings`` when config.json does not say.
        hf_to_tune_keys (dict | None): HF -> torchtune parameter names (``{}`` = layer index);
            None: torchtune's Llama converter, which also permutes q/k rows.
        norm_modules (tuple[str, ...]): a layer's modules that are norms (their parameters are
            ``norm`` units in stage 2).
        post_branch_norms (tuple[str, ...]): norms applied to a branch's *output* before the
            residual add (Gemma's sandwich norms, torchtune's ``sa_scale``/``mlp_scale``).
            They rescale whatever the branch emits to full size, which decides how a copy
            must start (``expansion.copy_init``).
        norm_gain_offset (float): the norm multiplies by ``offset + w`` (Gemma: 1, so a zero
            gain is ``w = -1``; torchtune's RMSNorm: 0).
        leading_bos (bool): the model needs ``<bos>`` at position 0 of every sequence.
    """

    name: str
    hf_model_types: tuple[str, ...]
    hf_architecture: str
    attention_class: type[nn.Module]
    build: Callable[[ModelArchitecture, int], TransformerDecoder]
    read_hf: Callable[[dict[str, Any], str], dict[str, Any]]
    write_hf: Callable[[ModelArchitecture, dict[str, Any]], None]
    read_module: Callable[[nn.Module], dict[str, Any]]
    tie_default: bool = False
    hf_to_tune_keys: dict[str, str | None] | None = None
    norm_modules: tuple[str, ...] = _PRE_NORMS
    post_branch_norms: tuple[str, ...] = ()
    norm_gain_offset: float = 0.0
    leading_bos: bool = False

    @property
    def tune_to_hf_keys(self) -> dict[str, str]:
        """torchtune -> HF parameter names (the inverse of ``hf_to_tune_keys``)."""
        table = self.hf_to_tune_keys if self.hf_to_tune_keys is not None else LLAMA_FROM_HF
        return {tune: hf for hf, tune in table.items() if tune is not None}


# ------------------------------------------------------------------------------- Qwen3, Llama


def _rope_base(config: dict[str, Any]) -> float:
    rope_params = config.get("rope_parameters") or {}
    return float(config.get("rope_theta") or rope_params.get("rope_theta") or 10_000.0)


def _read_plain_rope(config: dict[str, Any], source: str, family: str) -> dict[str, Any]:
    """Qwen3: one RoPE base, no scaling."""
    _refuse_rope_scaling(config, source, family, allowed=())
    return {"rope_base": _rope_base(config)}


def _refuse_rope_scaling(
    config: dict[str, Any], source: str, family: str, allowed: tuple[str, ...]
) -> dict[str, Any] | None:
    """The RoPE scaling entry of a config, or None; an unsupported type is refused."""
    rope_params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or rope_params
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type not in allowed:
        field = "rope_scaling" if config.get("rope_scaling") else "rope_parameters"
        supported = " or ".join([repr(t) for t in allowed] + ["none"])
        raise ValueError(
            f"{source}: {field}.rope_type={rope_type!r} is not supported for {family} "
            f"(supported: {supported})"
        )
    return scaling


_LLAMA_UNSUPPORTED = {"attention_bias": False, "mlp_bias": False, "hidden_act": "silu"}
_ROPE_SCALING_FIELDS = tuple(f.name for f in dataclasses.fields(Llama3RopeScaling))


def _refuse(config: dict[str, Any], source: str, supported: dict[str, Any]) -> None:
    """Refuse a config field whose value the builder does not implement."""
    for key, value in supported.items():
        if config.get(key, value) != value:
            raise ValueError(
                f"{source}: {key}={config[key]!r} is not supported (supported: {value!r})"
            )


def _read_llama(config: dict[str, Any], source: str) -> dict[str, Any]:
    _refuse(config, source, _LLAMA_UNSUPPORTED)
    scaling = _refuse_rope_scaling(config, source, "llama", allowed=("llama3",))
    fields: dict[str, Any] = {"rope_base": _rope_base(config)}
    if scaling is None:
        return fields
    field = "rope_scaling" if config.get("rope_scaling") else "rope_parameters"
    if "factor" not in scaling:
        raise ValueError(f"{source}: {field} of rope_type 'llama3' lacks 'factor'")
    values = {k: scaling[k] for k in _ROPE_SCALING_FIELDS if k in scaling}
    try:
        values = {
            k: int(v) if k == "original_max_position_embeddings" else float(v)
            for k, v in values.items()
        }
        fields["rope_scaling"] = Llama3RopeScaling(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {field}: {e}") from None
    return fields


def _write_single_rope(arch: ModelArchitecture, config: dict[str, Any]) -> None:
    """One RoPE base (and Llama 3 scaling), in whichever spelling the config uses."""
    scaling = (
        {"rope_type": "llama3", **dataclasses.asdict(arch.rope_scaling)}
        if arch.rope_scaling
        else {}
    )
    if "rope_parameters" in config:  # transformers 5 spelling: theta and scaling in one
        config["rope_parameters"] = {
            **config["rope_parameters"],
            "rope_theta": arch.rope_base,
            **scaling,
        }
    else:
        config["rope_theta"] = arch.rope_base
        if scaling:
            config["rope_scaling"] = {**(config.get("rope_scaling") or {}), **scaling}


def _build_qwen3(arch: ModelArchitecture, max_seq_len: int) -> TransformerDecoder:
    return qwen3(**arch.common_numbers(max_seq_len), rope_base=arch.rope_base)


def _build_llama(arch: ModelArchitecture, max_seq_len: int) -> TransformerDecoder:
    return llama(
        **arch.common_numbers(max_seq_len),
        rope_base=arch.rope_base,
        rope_scaling=arch.rope_scaling,
    )


_QWEN3_FROM_HF: dict[str, str | None] = {
    **{k: v for k, v in QWEN2_FROM_HF.items() if not k.endswith(".bias")},
    "model.layers.{}.self_attn.q_norm.weight": "layers.{}.attn.q_norm.scale",
    "model.layers.{}.self_attn.k_norm.weight": "layers.{}.attn.k_norm.scale",
}

# ------------------------------------------------------------------------------------ Gemma 3

_GEMMA3_UNSUPPORTED = {
    "attention_bias": False,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "use_bidirectional_attention": False,
}
_GEMMA3_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_tanh")


def _read_gemma3(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Gemma 3's per-layer attention kinds, window, score scale and two RoPE bases.

    Reads both spellings: transformers 4.x (``rope_theta``, ``rope_local_base_freq``,
    ``rope_scaling`` of the global layers, ``sliding_window_pattern`` or ``layer_types``) and
    5.x (``rope_parameters`` keyed by layer type).
    """
    for key, value in _GEMMA3_UNSUPPORTED.items():
        if config.get(key) not in (None, value):
            raise ValueError(
                f"{source}: {key}={config[key]!r} is not implemented for gemma3_text "
                f"(supported: {value!r})"
            )
    activation = (
        config.get("hidden_activation") or config.get("hidden_act") or _GEMMA3_ACTIVATIONS[0]
    )
    if activation not in _GEMMA3_ACTIVATIONS:
        raise ValueError(
            f"{source}: hidden_activation={activation!r} is not supported for gemma3_text "
            f"(supported: {_GEMMA3_ACTIVATIONS[0]!r})"
        )
    num_layers = config["num_hidden_layers"]
    if config.get("layer_types") is not None:
        layer_types = check_layer_types(config["layer_types"], num_layers, f"{source}: layer_types")
    else:
        pattern = config.get("sliding_window_pattern", 6)
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
            raise ValueError(
                f"{source}: sliding_window_pattern={pattern!r} must be a positive integer"
            )
        layer_types = interleaved_layer_types(num_layers, pattern)
    window = config.get("sliding_window", 4096)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"{source}: sliding_window={window!r} must be a positive integer")

    rope_params = config.get("rope_parameters")
    if isinstance(rope_params, dict) and (FULL in rope_params or SLIDING in rope_params):
        full, local = rope_params.get(FULL) or {}, rope_params.get(SLIDING) or {}
        full_field, local_field = f"rope_parameters.{FULL}", f"rope_parameters.{SLIDING}"
        rope_base = float(full.get("rope_theta", 1_000_000.0))
        local_base = float(local.get("rope_theta", 10_000.0))
    else:
        full = config.get("rope_scaling") or {}
        local = {}
        full_field, local_field = "rope_scaling", "rope_local_base_freq"
        rope_base = float(config.get("rope_theta") or (rope_params or {}).get("rope_theta") or 1e6)
        local_base = float(config.get("rope_local_base_freq", 10_000.0))
    local_type = local.get("rope_type", local.get("type", "default"))
    if local_type != "default":
        raise ValueError(
            f"{source}: {local_field}.rope_type={local_type!r} is not supported for the "
            "sliding layers of gemma3_text (supported: 'default')"
        )
    full_type = full.get("rope_type", full.get("type", "default"))
    scaling = None
    if full_type == "linear":
        if "factor" not in full:
            raise ValueError(f"{source}: {full_field} of rope_type 'linear' lacks 'factor'")
        scaling = LinearRopeScaling(float(full["factor"]))
    elif full_type != "default":
        raise ValueError(
            f"{source}: {full_field}.rope_type={full_type!r} is not supported for gemma3_text "
            "(supported: 'linear' or 'default')"
        )
    scalar = config.get("query_pre_attn_scalar", 256)
    return {
        "rope_base": rope_base,
        "rope_scaling": scaling,
        "layer_types": layer_types,
        "sliding_window": window,
        "local_rope_base": local_base,
        "query_pre_attn_scalar": float(scalar) if scalar is not None else None,
    }


def _write_gemma3(arch: ModelArchitecture, config: dict[str, Any]) -> None:
    """Write the per-layer kinds explicitly (an integer ``sliding_window_pattern`` would point
    at the wrong layers after expansion), the window, the scale and both RoPE bases."""
    config.pop("sliding_window_pattern", None)
    config.pop("_sliding_window_pattern", None)
    scalar = arch.query_pre_attn_scalar
    config.update(
        layer_types=list(arch.layer_types),
        sliding_window=arch.sliding_window,
        query_pre_attn_scalar=int(scalar) if scalar is not None and scalar.is_integer() else scalar,
        hidden_activation=config.get("hidden_activation", "gelu_pytorch_tanh"),
    )
    scaling = (
        {"rope_type": "linear", "factor": arch.rope_scaling.factor} if arch.rope_scaling else {}
    )
    if "rope_parameters" in config:  # transformers 5: one entry per layer type
        params = dict(config["rope_parameters"] or {})
        full = {**(params.get(FULL) or {}), "rope_theta": arch.rope_base}
        if not scaling:
            full = {k: v for k, v in full.items() if k != "factor"}
            full["rope_type"] = "default"
        params[FULL] = {**full, **scaling}
        params[SLIDING] = {
            **(params.get(SLIDING) or {"rope_type": "default"}),
            "rope_theta": arch.local_rope_base,
        }
        config["rope_parameters"] = params
    else:
        config["rope_theta"] = arch.rope_base
        config["rope_local_base_freq"] = arch.local_rope_base
        config["rope_scaling"] = scaling or None


def _build_gemma3(arch: ModelArchitecture, max_seq_len: int) -> TransformerDecoder:
    return gemma3(
        **arch.common_numbers(max_seq_len),
        layer_types=arch.layer_types,
        sliding_window=arch.sliding_window,
        rope_base=arch.rope_base,
        local_rope_base=arch.local_rope_base,
        query_pre_attn_scalar=arch.query_pre_attn_scalar,
        rope_scaling=arch.rope_scaling,
    )


_GEMMA3_FROM_HF: dict[str, str | None] = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.sa_norm.scale",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.sa_scale.scale",
    "model.layers.{}.pre_feedforward_layernorm.weight": "layers.{}.mlp_norm.scale",
    "model.layers.{}.post_feedforward_layernorm.weight": "layers.{}.mlp_scale.scale",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attn.q_proj.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attn.k_proj.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attn.v_proj.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attn.output_proj.weight",
    "model.layers.{}.self_attn.q_norm.weight": "layers.{}.attn.q_norm.scale",
    "model.layers.{}.self_attn.k_norm.weight": "layers.{}.attn.k_norm.scale",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.w1.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.mlp.w2.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.mlp.w3.weight",
    "model.norm.weight": "norm.scale",
    "lm_head.weight": "output.weight",
}

# ------------------------------------------------------------------- fields of a built model


def _rope_module_fields(model: nn.Module) -> dict[str, Any]:
    """Qwen3, Llama: one RoPE module, its base and any Llama 3 scaling."""
    rope = model.layers[0].attn.pos_embeddings
    fields: dict[str, Any] = {"rope_base": float(rope.base)}
    if isinstance(rope, Llama3ScaledRoPE):
        fields["rope_scaling"] = Llama3RopeScaling(
            factor=float(rope.scale_factor),
            low_freq_factor=float(rope.low_freq_factor),
            high_freq_factor=float(rope.high_freq_factor),
            original_max_position_embeddings=int(rope.old_context_len),
        )
    return fields


def _gemma3_module_fields(model: nn.Module) -> dict[str, Any]:
    """Gemma 3: each layer's kind from its window, the two RoPE modules, the score scale."""
    windows = [block.attn.sliding_window for block in model.layers]
    ropes: dict[str, nn.Module] = {}
    for block, window in zip(model.layers, windows, strict=True):
        ropes.setdefault(SLIDING if window else FULL, block.attn.pos_embeddings)
    full, local = ropes.get(FULL), ropes.get(SLIDING)
    scale = model.layers[0].attn.scale
    return {
        "layer_types": tuple(SLIDING if w else FULL for w in windows),
        "sliding_window": next((w for w in windows if w), 4096),
        "local_rope_base": float(local.base) if local is not None else 10_000.0,
        "rope_base": float(full.base) if full is not None else 1_000_000.0,
        "rope_scaling": LinearRopeScaling(float(full.factor))
        if isinstance(full, LinearScaledRoPE)
        else None,
        "query_pre_attn_scalar": None if scale is None else round(scale**-2, 6),
    }


# ------------------------------------------------------------------------------------ records

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        ModelFamily(
            name="gemma3",
            hf_model_types=("gemma3_text",),
            hf_architecture="Gemma3ForCausalLM",
            attention_class=Gemma3Attention,
            build=_build_gemma3,
            read_hf=_read_gemma3,
            write_hf=_write_gemma3,
            read_module=_gemma3_module_fields,
            tie_default=True,
            hf_to_tune_keys=_GEMMA3_FROM_HF,
            norm_modules=(*_PRE_NORMS, "sa_scale", "mlp_scale", *_QK_NORMS),
            post_branch_norms=("sa_scale", "mlp_scale"),
            norm_gain_offset=1.0,
            leading_bos=True,
        ),
        ModelFamily(
            name="qwen3",
            hf_model_types=("qwen3",),
            hf_architecture="Qwen3ForCausalLM",
            attention_class=Qwen3Attention,
            build=_build_qwen3,
            read_hf=lambda config, source: _read_plain_rope(config, source, "qwen3"),
            write_hf=_write_single_rope,
            read_module=_rope_module_fields,
            hf_to_tune_keys=_QWEN3_FROM_HF,
            norm_modules=(*_PRE_NORMS, *_QK_NORMS),
        ),
        ModelFamily(
            name="llama",
            hf_model_types=("llama",),
            hf_architecture="LlamaForCausalLM",
            attention_class=MultiHeadAttention,
            build=_build_llama,
            read_hf=_read_llama,
            write_hf=_write_single_rope,
            read_module=_rope_module_fields,
        ),
    )
}
_BY_MODEL_TYPE = {t: f for f in FAMILIES.values() for t in f.hf_model_types}
# Every family's norm module names: a unit name alone says whether it is a norm.
ALL_NORM_MODULES: frozenset[str] = frozenset(
    name for f in FAMILIES.values() for name in f.norm_modules
) | {"norm"}


def family_for_model_type(model_type: Any, source: str) -> ModelFamily:
    """The family that reads a config.json ``model_type``.

    Raises:
        ValueError: no family reads it (the supported ones listed).
    """
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    hint = ""
    if model_type == "gemma3":
        hint = (
            "; a multimodal Gemma 3 checkpoint (4B and up) holds its text decoder under "
            "text_config: extract it as a gemma3_text model"
        )
    raise ValueError(
        f"{source}: model_type={model_type!r} is not supported "
        f"(supported: {sorted(_BY_MODEL_TYPE)}){hint}"
    )


def family_of(model: nn.Module) -> ModelFamily:
    """The family of a built decoder, told by its attention module's class.

    Raises:
        ValueError: the attention module is of no known family.
    """
    attn = model.layers[0].attn
    # Most specific first: Qwen3's and Gemma 3's attention subclass torchtune's (Llama's).
    for family in sorted(FAMILIES.values(), key=lambda f: -len(f.attention_class.__mro__)):
        if isinstance(attn, family.attention_class):
            return family
    raise ValueError(
        f"cannot tell the model family of a decoder whose attention is {type(attn).__name__} "
        f"(known: {', '.join(f'{f.name} ({f.attention_class.__name__})' for f in FAMILIES.values())})"
    )
