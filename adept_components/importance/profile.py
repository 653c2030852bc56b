"""S1.2-S1.3 layer profile: the importance scores, the chosen layers, and where they came from.

A ``LayerProfile`` is what stage 1 decides and what a later run (resume, expansion from a saved
profile, a report) must be able to trust: the per-layer scores of each method, the S2.2 unit
scores of the base model, the selected layers, and the identity of the model and the probe
data they were measured on. ``write_profile`` saves it as ``layer_importance.json`` with two
pictures: a layers × units heatmap (as the ADEPT paper's Fig. 2) and a per-layer bar chart of
the chosen method's scores with the selected layers highlighted. ``check_profile_matches``
refuses a profile measured on another model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import nn

from adept_components.atomic import atomic_write, write_text_atomically
from adept_components.data.probe import ProbeSetInfo
from adept_components.expansion import check_selected_layers
from adept_components.importance.interference import interference_scores
from adept_components.importance.layer_importance import (
    IMPORTANCE_METHODS,
    Batch,
    ImportanceMethod,
    grad_cumulative_importance,
    mask_out_losses,
    rank_importance,
    select_layers,
)
from adept_components.importance.snr import check_snr_applies, module_snr, snr_layer_scores
from adept_components.models.architecture import architecture_of

PROFILE_FILE = "layer_importance.json"
HEATMAP_FILE = "layer_importance_units.png"
LAYERS_FILE = "layer_importance_layers.png"
_FORMAT_VERSION = 1
_SCORE_LABELS = {
    "mask-out": "I(l) = L̂(l) − L_base  (nats/token)",
    "grad-cumulative": "Σ|g·θ| over the layer / max",
    "rank": "1 − mean rank / L",
    "snr": "mean over matrix kinds of SNR / its max",
    "interference": "predicted Δ general loss per nat of domain gain",
}


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """Which model a profile was measured on.

    Attributes:
        num_layers (int): decoder layers.
        architecture (dict[str, Any]): ``ModelArchitecture`` fields except ``max_seq_len`` (a
            RoPE cache length chosen at build time, not a property of the weights).
        checkpoint_dir (str | None): the checkpoint the weights were loaded from, if known.
    """

    num_layers: int
    architecture: dict[str, Any]
    checkpoint_dir: str | None = None

    @property
    def name(self) -> str:
        """A short display name: the checkpoint directory's name, or family and depth."""
        if self.checkpoint_dir:
            return Path(self.checkpoint_dir).name
        return f"{self.architecture.get('family', 'model')}-{self.num_layers}L"


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """Layer and unit importance of one model on one probe set, and the layers chosen.

    Attributes:
        method (str): the method that chose ``selected_layers`` (a key of ``layer_scores``).
        layer_scores (dict[str, list[float]]): method -> one score per layer (higher = more
            critical).
        selected_layers (list[int]): the layers to expand, sorted ascending.
        model (ModelIdentity): the model measured.
        data (ProbeSetInfo): the probe set measured on.
        unit_scores (dict[int, dict[str, float]]): S2.2 unit scores, layer -> parameter name
            -> score; empty when not computed.
        base_loss (float | None): the full model's probe loss, when mask-out ran.
        domain (dict[str, Any] | None): which domain batches the interference score used
            (source, batches, batch size, sequence length, seed); None when not scored.
        seconds (dict[str, float]): what each pass cost on this machine (``mask-out``,
            ``unit scores``, ``interference``): the probe's price, beside its answer.

    Raises:
        ValueError: on construction, when the fields disagree (unknown method, a score list
            of the wrong length, invalid selected layers, unit scores for the wrong layers or
            a non-finite score).
    """

    method: str
    layer_scores: dict[str, list[float]]
    selected_layers: list[int]
    model: ModelIdentity
    data: ProbeSetInfo
    unit_scores: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
    base_loss: float | None = None
    domain: dict[str, Any] | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        num_layers = self.model.num_layers
        if self.method not in IMPORTANCE_METHODS:
            raise ValueError(
                f"profile method={self.method!r} is not one of {list(IMPORTANCE_METHODS)}"
            )
        if self.method not in self.layer_scores:
            raise ValueError(
                f"profile method={self.method!r} has no layer scores "
                f"(scored: {sorted(self.layer_scores)})"
            )
        for method, scores in self.layer_scores.items():
            if len(scores) != num_layers:
                raise ValueError(
                    f"profile layer_scores[{method!r}] has {len(scores)} entries for a "
                    f"{num_layers}-layer model"
                )
            if not all(math.isfinite(s) for s in scores):
                raise ValueError(f"profile layer_scores[{method!r}] is not finite: {scores}")
        check_selected_layers(self.selected_layers, num_layers, field="selected_layers")
        if self.unit_scores and sorted(self.unit_scores) != list(range(num_layers)):
            raise ValueError(
                f"profile unit_scores covers layers {sorted(self.unit_scores)}, "
                f"expected 0..{num_layers - 1}"
            )

    @property
    def scores(self) -> list[float]:
        """The scores of the method that chose the layers."""
        return self.layer_scores[self.method]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (unit score layer keys become strings)."""
        return {
            "format_version": _FORMAT_VERSION,
            "method": self.method,
            "selected_layers": list(self.selected_layers),
            "base_loss": self.base_loss,
            "layer_scores": {m: list(s) for m, s in self.layer_scores.items()},
            "unit_scores": {str(i): dict(u) for i, u in self.unit_scores.items()},
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "domain": self.domain,
            "seconds": dict(self.seconds),
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> LayerProfile:
        """Rebuild a profile from ``to_dict``'s output.

        Raises:
            ValueError: a missing field or an unknown format version.
        """
        version = record.get("format_version")
        if version != _FORMAT_VERSION:
            raise ValueError(
                f"layer profile format_version={version!r}, this code reads {_FORMAT_VERSION}"
            )
        try:
            return cls(
                method=record["method"],
                layer_scores={m: list(s) for m, s in record["layer_scores"].items()},
                selected_layers=list(record["selected_layers"]),
                model=ModelIdentity(**record["model"]),
                data=ProbeSetInfo(**record["data"]),
                unit_scores={int(i): dict(u) for i, u in record["unit_scores"].items()},
                base_loss=record.get("base_loss"),
                domain=record.get("domain"),
                seconds=dict(record.get("seconds") or {}),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a layer profile record: {err}") from err


def model_identity(
    model: nn.Module, checkpoint_dir: str | os.PathLike | None = None
) -> ModelIdentity:
    """The identity of a decoder built by ``adept_components.models``.

    Args:
        model (nn.Module): the decoder.
        checkpoint_dir (str | os.PathLike | None): where its weights came from, if known.

    Returns:
        ModelIdentity: layer count, architecture numbers and checkpoint directory.
    """
    # As JSON holds it (tuples become lists), so a saved profile compares equal.
    architecture = json.loads(json.dumps(dataclasses.asdict(architecture_of(model))))
    architecture.pop("max_seq_len")
    return ModelIdentity(
        num_layers=len(model.layers),
        architecture=architecture,
        checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
    )


def profile_layers(
    model: nn.Module,
    batches: Sequence[Batch],
    data: ProbeSetInfo,
    k: int,
    method: ImportanceMethod = "mask-out",
    checkpoint_dir: str | os.PathLike | None = None,
    score_units: bool = True,
    group: dist.ProcessGroup | None = None,
    progress: bool = False,
    domain: Sequence[Batch] | None = None,
    fills: dict[str, float] | None = None,
    domain_info: dict[str, Any] | None = None,
    chunk: int | None = None,
) -> LayerProfile:
    """Score the layers of ``model`` on the probe and select the ``k`` least critical (S1.2-S1.3).

    Mask-out losses are always computed (they give ``base_loss``). With ``score_units`` one
    more forward/backward per batch gives the S2.2 unit scores (the heatmap) and, from them,
    the grad-cumulative and rank scores, so the profile records all three methods. With
    ``domain`` batches the interference score (``importance.interference``) is added too.

    Args:
        model (nn.Module): the base decoder M0 (unsharded).
        batches (Sequence[Batch]): probe batches from ``probe_batches``.
        data (ProbeSetInfo): the probe set's identity (``ProbeData.info``).
        k (int): layers to select.
        method (str): method whose scores choose the layers. Default: ``"mask-out"``.
        checkpoint_dir (str | os.PathLike | None): the checkpoint M0 was loaded from.
        score_units (bool): also compute gradient scores. Default: True.
        group (dist.ProcessGroup | None): process group to share the batches over.
        progress (bool): show progress bars (rank 0 of a run).
        domain (Sequence[Batch] | None): domain batches; the interference score needs them.
        fills (dict[str, float] | None): how a copy starts (``expansion.copy_fills``); needed
            with ``domain``.
        domain_info (dict[str, Any] | None): where the domain batches came from, recorded.
        chunk (int | None): copies per interference pass (memory); default all at once.

    Returns:
        LayerProfile: the profile (identical on every rank).

    Raises:
        ValueError: unknown ``method``, ``method`` needs gradient scores but ``score_units``
            is False, ``interference`` without domain batches or fills, ``k`` out of range,
            or invalid batches.
    """
    if method not in IMPORTANCE_METHODS:
        raise ValueError(
            f"importance method={method!r} is not supported "
            f"(choose one of {list(IMPORTANCE_METHODS)})"
        )
    if method in ("grad-cumulative", "rank") and not score_units:
        raise ValueError(f"importance method={method!r} needs score_units=True")
    if (method == "interference" or domain is not None) and (not domain or fills is None):
        raise ValueError("the interference score needs domain batches and the copies' fills")
    num_layers = len(model.layers)
    if not 1 <= k < num_layers:
        raise ValueError(
            f"k={k} layers to expand, but the model has {num_layers} layers "
            f"(valid: 1..{num_layers - 1})"
        )
    if method == "snr":  # data-free: no probe pass; the heatmap shows each matrix's SNR
        check_snr_applies(model)
        per_module = module_snr(model)
        scores = snr_layer_scores(per_module)
        return LayerProfile(
            method=method,
            layer_scores={"snr": scores},
            selected_layers=select_layers(scores, k),
            model=model_identity(model, checkpoint_dir),
            data=data,
            unit_scores={
                layer: {f"{kind}.weight": v for kind, v in kinds.items()}
                for layer, kinds in per_module.items()
            },
        )
    seconds = {}
    start = time.perf_counter()
    losses = mask_out_losses(model, batches, group, progress)
    layer_scores = {"mask-out": losses.importance}
    seconds["mask-out"] = time.perf_counter() - start
    unit_scores: dict[int, dict[str, float]] = {}
    if score_units:
        start = time.perf_counter()
        gradient = grad_cumulative_importance(model, batches, group, progress)
        unit_scores = gradient.unit_scores
        layer_scores["grad-cumulative"] = gradient.layer_scores
        layer_scores["rank"] = rank_importance(unit_scores, num_layers)
        seconds["unit scores"] = time.perf_counter() - start
    if domain:
        start = time.perf_counter()
        per_layer = interference_scores(
            model, batches, domain, fills, chunk=chunk, group=group, progress=progress
        )
        layer_scores["interference"] = [per_layer[i] for i in range(num_layers)]
        seconds["interference"] = time.perf_counter() - start
    return LayerProfile(
        method=method,
        layer_scores=layer_scores,
        selected_layers=select_layers(layer_scores[method], k),
        model=model_identity(model, checkpoint_dir),
        data=data,
        unit_scores=unit_scores,
        base_loss=losses.base_loss,
        domain=dict(domain_info or {}) if domain else None,
        seconds=seconds,
    )


def check_profile_matches(
    profile: LayerProfile,
    model: nn.Module,
    checkpoint_dir: str | os.PathLike | None = None,
) -> None:
    """Refuse a profile that was measured on a different model.

    Compares the layer count, then every architecture number, then (when both are known) the
    checkpoint directory. Check against the *base* model: an expanded model has more layers.

    Args:
        profile (LayerProfile): the profile to reuse.
        model (nn.Module): the base decoder it is about to be applied to.
        checkpoint_dir (str | os.PathLike | None): where the model's weights come from; None
            skips the directory check.

    Raises:
        ValueError: naming what differs.
    """
    current = model_identity(model, checkpoint_dir)
    recorded = profile.model
    if current.num_layers != recorded.num_layers:
        raise ValueError(
            f"the layer profile was measured on a {recorded.num_layers}-layer model "
            f"({recorded.name}) but this model has {current.num_layers} layers: re-run the "
            "probe or point the profile path at this model's profile"
        )
    differing = {
        key: (recorded.architecture.get(key), value)
        for key, value in current.architecture.items()
        if recorded.architecture.get(key) != value
    }
    if differing:
        details = ", ".join(f"{k}: profile {a!r} vs model {b!r}" for k, (a, b) in differing.items())
        raise ValueError(f"the layer profile was measured on a different architecture ({details})")
    if checkpoint_dir is None or recorded.checkpoint_dir is None:
        return
    if Path(recorded.checkpoint_dir).resolve() != Path(checkpoint_dir).resolve():
        raise ValueError(
            f"the layer profile was measured on checkpoint {recorded.checkpoint_dir!r}, "
            f"not {str(checkpoint_dir)!r}: re-run the probe for this checkpoint"
        )


def write_profile(profile: LayerProfile, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Save a profile as JSON plus two PNGs; each file is written atomically.

    Call it on one rank only. The unit heatmap is drawn only when the profile has unit scores.

    Args:
        profile (LayerProfile): the profile.
        out_dir (str | os.PathLike): directory to write into (created if missing).

    Returns:
        dict[str, Path]: ``"json"``, ``"layers"`` and (with unit scores) ``"units"`` -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / PROFILE_FILE, "layers": out / LAYERS_FILE}
    text = json.dumps(profile.to_dict(), indent=2)
    write_text_atomically(paths["json"], text + "\n")
    atomic_write(paths["layers"], lambda tmp: _plot_layer_scores(profile, tmp))
    if profile.unit_scores:
        paths["units"] = out / HEATMAP_FILE
        atomic_write(paths["units"], lambda tmp: _plot_unit_heatmap(profile, tmp))
    return paths


def read_profile(path: str | os.PathLike) -> LayerProfile:
    """Load a profile written by ``write_profile``.

    Args:
        path (str | os.PathLike): the JSON file, or the directory holding ``layer_importance.json``.

    Returns:
        LayerProfile: the profile.

    Raises:
        FileNotFoundError: no profile at ``path``.
        ValueError: the file is not a valid profile.
    """
    file = Path(path)
    if file.is_dir():
        file = file / PROFILE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no layer profile at {str(file)!r}")
    try:
        record = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    return LayerProfile.from_dict(record)


def _short_unit_name(name: str) -> str:
    """``attn.q_proj.weight`` -> ``attn.q_proj``; ``sa_norm.scale`` -> ``sa_norm``."""
    return name.rsplit(".", 1)[0] if name.endswith((".weight", ".scale", ".bias")) else name


def _plot_unit_heatmap(profile: LayerProfile, path: Path) -> None:
    """Layers (y) × units (x); each column scaled by its largest layer (units differ in size)."""
    num_layers = profile.model.num_layers
    names = list(profile.unit_scores[0])
    matrix = [[profile.unit_scores[i][n] for n in names] for i in range(num_layers)]  # [L, U]
    column_max = [max(row[j] for row in matrix) for j in range(len(names))]
    scaled = [
        [v / m if m > 0 else 0.0 for v, m in zip(row, column_max, strict=True)] for row in matrix
    ]
    fig = Figure(figsize=(max(6.0, 0.55 * len(names) + 3), max(4.0, 0.28 * num_layers + 2)))
    ax = fig.add_subplot()
    image = ax.imshow(scaled, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), [_short_unit_name(n) for n in names], rotation=45, ha="right")
    _label_layers(ax.set_yticks, ax.get_yticklabels, num_layers, profile.selected_layers)
    ax.set_xlabel("unit (parameter tensor)")
    ax.set_ylabel("layer (selected in red)")
    what = (
        "Matrix SNR (Spectrum)" if profile.method == "snr" else "Unit importance mean(|θ|·mean|g|)"
    )
    ax.set_title(f"{what} — {profile.model.name}")
    fig.colorbar(image, ax=ax, label="unit score / its max over layers")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)


def _plot_layer_scores(profile: LayerProfile, path: Path) -> None:
    """One bar per layer for the chosen method; selected layers coloured and labelled.

    When another method chose, mask-out's scores are drawn below it, for comparison.
    """
    methods = [profile.method]
    if profile.method != "mask-out" and "mask-out" in profile.layer_scores:
        methods.append("mask-out")
    num_layers = len(profile.scores)
    selected = set(profile.selected_layers)
    fig = Figure(figsize=(max(6.0, 0.3 * num_layers + 2) + 2.5, 4.0 * len(methods)))
    for row, method in enumerate(methods):
        scores = profile.layer_scores[method]
        ax = fig.add_subplot(len(methods), 1, row + 1)
        colours = ["tab:red" if i in selected else "tab:blue" for i in range(num_layers)]
        ax.bar(range(num_layers), scores, color=colours)
        ax.axhline(0.0, color="black", linewidth=0.8)
        for i in profile.selected_layers:
            # A selected layer's score is often ~0, so its bar is invisible: shade its column.
            ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.12, linewidth=0)
            ax.annotate(
                str(i),
                xy=(i, max(scores[i], 0.0)),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                color="tab:red",
                fontweight="bold",
            )
        _label_layers(ax.set_xticks, ax.get_xticklabels, num_layers, profile.selected_layers)
        ax.set_xlabel("layer")
        ax.set_ylabel(_SCORE_LABELS[method], fontsize="small")
        if row == 0:
            base = "" if profile.base_loss is None else f", L_base = {profile.base_loss:.4f}"
            ax.set_title(f"Layer importance ({method}) — {profile.model.name}{base}")
            ax.legend(
                handles=[
                    Patch(color="tab:red", label=f"selected for expansion (k={len(selected)})"),
                    Patch(color="tab:blue", label="kept as is"),
                ],
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                fontsize="small",
            )
        else:
            ax.set_title(f"{method}, for comparison (red: the layers {profile.method} chose)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)


def _label_layers(
    set_ticks: Callable[..., Any],
    get_labels: Callable[[], list[Any]],
    num_layers: int,
    selected: Sequence[int],
) -> None:
    set_ticks(range(num_layers), [str(i) for i in range(num_layers)])
    for i in selected:
        label = get_labels()[i]
        label.set_color("tab:red")
        label.set_fontweight("bold")
