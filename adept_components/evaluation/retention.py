"""Retention report: how much general competence an adapted model kept, and what it gained.

The spec's claim ("Paper's setups and results") is two-sided: the adapted model should gain on
the target domain without losing on general text. The cheapest faithful measure of both is the
held-out loss of the base model M0 and of the adapted model on a general and a domain set. This
module turns those four numbers into a report: losses, perplexities ``exp(loss)``, and the
deltas ``adapted - base`` (absolute and relative to the base), as JSON, a markdown table and a
bar chart, plus the forgetting-canary curve the training recipe records.

Sign convention: a negative delta is an improvement. A positive general delta is forgetting.

Plain functions and dataclasses: callers pass numbers and histories, never a config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from adept_components.atomic import atomic_writes

HELD_OUT_SETS = ("general", "domain")
CANARY_KEYS = ("step", "general_loss", "domain_loss", "general_base", "domain_base")
REPORT_FILES = {
    "json": "retention.json",
    "markdown": "retention.md",
    "chart": "retention.png",
    "canary": "canary.png",
}
_BASE_COLOUR, _ADAPTED_COLOUR = "#9e9e9e", "#1f77b4"
_SET_COLOURS = {"general": "#1f77b4", "domain": "#d62728"}


@dataclasses.dataclass(frozen=True)
class HeldOutComparison:
    """Base and adapted loss on one held-out set, with what follows from them.

    Attributes:
        name (str): the held-out set, ``"general"`` or ``"domain"``.
        base_loss (float): mean token cross-entropy of the base model, in nats.
        adapted_loss (float): the same for the adapted model.
        num_tokens (int | None): supervised tokens the means are over, if known.
    """

    name: str
    base_loss: float
    adapted_loss: float
    num_tokens: int | None = None

    def __post_init__(self) -> None:
        for field in ("base_loss", "adapted_loss"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{self.name} {field}={value!r} must be a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"{self.name} {field}={value!r}: a cross-entropy loss is finite and >= 0"
                )
            if value > 700:  # exp() overflows a float64 near 709.8
                raise ValueError(f"{self.name} {field}={value!r} is too large for a perplexity")

    @property
    def base_perplexity(self) -> float:
        """``exp(base_loss)``."""
        return math.exp(self.base_loss)

    @property
    def adapted_perplexity(self) -> float:
        """``exp(adapted_loss)``."""
        return math.exp(self.adapted_loss)

    @property
    def loss_delta(self) -> float:
        """``adapted_loss - base_loss`` (negative = better)."""
        return self.adapted_loss - self.base_loss

    @property
    def loss_delta_relative(self) -> float | None:
        """``loss_delta / base_loss``; None when the base loss is 0."""
        return self.loss_delta / self.base_loss if self.base_loss > 0 else None

    @property
    def perplexity_delta(self) -> float:
        """``adapted_perplexity - base_perplexity``."""
        return self.adapted_perplexity - self.base_perplexity

    @property
    def perplexity_delta_relative(self) -> float:
        """``perplexity_delta / base_perplexity`` (a perplexity is at least 1)."""
        return self.perplexity_delta / self.base_perplexity

    def to_json(self) -> dict[str, Any]:
        """The comparison as a JSON-ready dict (every derived number spelled out)."""
        return {
            "base_loss": self.base_loss,
            "adapted_loss": self.adapted_loss,
            "loss_delta": self.loss_delta,
            "loss_delta_relative": self.loss_delta_relative,
            "base_perplexity": self.base_perplexity,
            "adapted_perplexity": self.adapted_perplexity,
            "perplexity_delta": self.perplexity_delta,
            "perplexity_delta_relative": self.perplexity_delta_relative,
            "num_tokens": self.num_tokens,
        }


@dataclasses.dataclass(frozen=True)
class RetentionReport:
    """General and domain comparisons of one base/adapted pair.

    Attributes:
        general (HeldOutComparison): on general-domain held-out text (retention).
        domain (HeldOutComparison): on target-domain held-out text (adaptation).
        metadata (dict): where the numbers come from (checkpoint dirs, step, data sources);
            JSON-serialisable values only.
    """

    general: HeldOutComparison
    domain: HeldOutComparison
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def comparisons(self) -> tuple[HeldOutComparison, HeldOutComparison]:
        """``(general, domain)``."""
        return self.general, self.domain

    def to_json(self) -> dict[str, Any]:
        """The report as the dict written to ``retention.json``."""
        return {
            "general": self.general.to_json(),
            "domain": self.domain.to_json(),
            "metadata": dict(self.metadata),
        }

    def to_markdown(self) -> str:
        """A markdown table of losses, perplexities and deltas, one row per held-out set."""
        header = (
            "| held-out set | base loss | adapted loss | Δ loss | Δ loss (rel.) "
            "| base ppl | adapted ppl | Δ ppl | Δ ppl (rel.) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        rows = "".join(
            f"| {c.name} | {c.base_loss:.4f} | {c.adapted_loss:.4f} | {c.loss_delta:+.4f} "
            f"| {_percent(c.loss_delta_relative)} | {c.base_perplexity:.3f} "
            f"| {c.adapted_perplexity:.3f} | {c.perplexity_delta:+.3f} "
            f"| {_percent(c.perplexity_delta_relative)} |\n"
            for c in self.comparisons()
        )
        source = "".join(f"- {key}: `{value}`\n" for key, value in self.metadata.items())
        return (
            "# Retention report\n\n"
            f"{header}{rows}\n"
            "Loss: mean token cross-entropy (nats) on held-out text; perplexity = exp(loss); "
            "Δ = adapted − base, relative to base. Negative is better; a positive general Δ "
            "is forgetting.\n" + (f"\n{source}" if source else "")
        )


def retention_report(
    general_base: float,
    general_adapted: float,
    domain_base: float,
    domain_adapted: float,
    metadata: Mapping[str, Any] | None = None,
    num_tokens: Mapping[str, int] | None = None,
) -> RetentionReport:
    """Build a report from the four held-out losses.

    Args:
        general_base (float): base model loss on general held-out text.
        general_adapted (float): adapted model loss on the same text.
        domain_base (float): base model loss on domain held-out text.
        domain_adapted (float): adapted model loss on the same text.
        metadata (Mapping | None): provenance written with the report.
        num_tokens (Mapping | None): supervised tokens per set, ``{"general": n, "domain": m}``.

    Returns:
        RetentionReport: the report.

    Raises:
        ValueError: a loss that is not a finite, non-negative number.
    """
    tokens = num_tokens or {}
    return RetentionReport(
        general=HeldOutComparison("general", general_base, general_adapted, tokens.get("general")),
        domain=HeldOutComparison("domain", domain_base, domain_adapted, tokens.get("domain")),
        metadata=dict(metadata or {}),
    )


def plot_retention(report: RetentionReport, path: str | Path) -> Path:
    """Save a PNG bar chart: base vs adapted, general vs domain; loss left, perplexity right.

    Args:
        report (RetentionReport): the numbers.
        path (str | Path): the PNG to write.

    Returns:
        Path: ``path``.
    """
    fig = Figure(figsize=(9.0, 4.0), dpi=120, layout="constrained")
    axes = fig.subplots(1, 2)
    names = [c.name for c in report.comparisons()]
    width = 0.38
    for ax, metric, label in (
        (axes[0], "loss", "held-out loss (nats / token)"),
        (axes[1], "perplexity", "held-out perplexity"),
    ):
        for offset, role, colour in (
            (-width / 2, "base", _BASE_COLOUR),
            (width / 2, "adapted", _ADAPTED_COLOUR),
        ):
            values = [getattr(c, f"{role}_{metric}") for c in report.comparisons()]
            bars = ax.bar(
                [i + offset for i in range(len(names))], values, width, label=role, color=colour
            )
            ax.bar_label(bars, fmt="%.3f" if metric == "loss" else "%.2f", fontsize=8, padding=2)
        digits = 4 if metric == "loss" else 2
        deltas = [
            f"{c.name}\nΔ {getattr(c, f'{metric}_delta'):+.{digits}f} "
            f"({_percent(getattr(c, f'{metric}_delta_relative'))})"
            for c in report.comparisons()
        ]
        ax.set_xticks(range(len(names)), deltas)
        ax.set_ylabel(label)
        ax.margins(y=0.15)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("Retention: base vs adapted on held-out text (lower is better)")
    return _save_figure(fig, path)


def plot_canary(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Save a PNG of the forgetting canary: general and domain loss over optimizer steps.

    One panel per held-out set, each with the base model's loss as a dashed horizontal line:
    the gap between the curve and its line is the forgetting (general, above the line) or the
    gain (domain, below it).

    Args:
        history (Sequence[Mapping]): ``canary.json`` records, one per canary step, each with
            ``step``, ``general_loss``, ``domain_loss``, ``general_base``, ``domain_base``.
        path (str | Path): the PNG to write.

    Returns:
        Path: ``path``.

    Raises:
        ValueError: an empty history, or a record without those keys or with a non-finite loss.
    """
    check_canary_history(history)
    steps = [record["step"] for record in history]
    fig = Figure(figsize=(7.5, 5.6), dpi=120, layout="constrained")
    # One panel per set: their losses differ by nats, a shared axis would flatten the general
    # curve, and general forgetting is the small effect this picture is for.
    axes = fig.subplots(2, 1, sharex=True)
    for ax, name, role in zip(axes, HELD_OUT_SETS, ("retention", "adaptation"), strict=True):
        colour = _SET_COLOURS[name]
        losses = [record[f"{name}_loss"] for record in history]
        base = history[-1][f"{name}_base"]
        ax.plot(steps, losses, "o-", color=colour, label="adapted model")
        ax.axhline(
            base, color=colour, linestyle="--", linewidth=1.2, label=f"base model ({base:.4f})"
        )
        delta = losses[-1] - base
        ax.set_title(
            f"{name} held-out loss ({role}): final Δ {delta:+.4f} ({delta / base:+.2%})"
            if base > 0
            else f"{name} held-out loss ({role})",
            fontsize=10,
        )
        ax.set_ylabel("loss (nats / token)")
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Forgetting canary: held-out loss during training vs the base model")
    return _save_figure(fig, path)


def check_canary_history(history: Sequence[Mapping[str, Any]]) -> None:
    """Raise a readable error unless ``history`` is a non-empty list of canary records.

    Args:
        history (Sequence[Mapping]): ``canary.json`` records.

    Raises:
        ValueError: naming the first bad record and what it lacks.
    """
    if not history:
        raise ValueError("the canary history is empty: no canary step was recorded")
    for index, record in enumerate(history):
        missing = [key for key in CANARY_KEYS if key not in record]
        if missing:
            raise ValueError(f"canary record {index} lacks {missing} (has {sorted(record)})")
        bad = [
            key
            for key in CANARY_KEYS[1:]
            if not isinstance(record[key], (int, float)) or not math.isfinite(record[key])
        ]
        if bad:
            raise ValueError(f"canary record {index} (step {record['step']}): {bad} not finite")


def write_retention_report(
    out_dir: str | Path,
    report: RetentionReport,
    history: Sequence[Mapping[str, float]] | None = None,
) -> dict[str, Path]:
    """Write ``retention.json``, ``retention.md``, ``retention.png`` (and ``canary.png``).

    Every file is first written to a hidden temporary file in ``out_dir`` and renamed over its
    target only once *all* of them rendered, so a failure (a plotting error, a full disk)
    leaves the previous report, if any, and no partial file.

    Args:
        out_dir (str | Path): directory to write into; created if missing.
        report (RetentionReport): the numbers.
        history (Sequence[Mapping] | None): canary records; ``canary.png`` is drawn only when
            given (a standalone evaluation has no training curve).

    Returns:
        dict[str, Path]: ``{"json", "markdown", "chart"[, "canary"]}`` -> written file.

    Raises:
        ValueError: a malformed ``history``.
    """
    if history is not None:
        check_canary_history(history)
    out = Path(out_dir).expanduser()
    writers: dict[str, Callable[[Path], Any]] = {
        "json": lambda p: p.write_text(json.dumps(report.to_json(), indent=2) + "\n"),
        "markdown": lambda p: p.write_text(report.to_markdown()),
        "chart": lambda p: plot_retention(report, p),
    }
    if history is not None:
        writers["canary"] = lambda p: plot_canary(history, p)
    out.mkdir(parents=True, exist_ok=True)
    written = {key: out / REPORT_FILES[key] for key in writers}
    atomic_writes({written[key]: write for key, write in writers.items()})
    return written


def retention_from_canary(
    history: Sequence[Mapping[str, float]], out_dir: str | Path, gate: str | None = None
) -> dict[str, Any]:
    """The training recipe's end-of-run report, from its canary records.

    The last record holds the final held-out losses and the base model's; the whole history
    gives the canary curve.

    Args:
        history (Sequence[Mapping]): ``canary.json`` records (``AdeptCPTRecipe.canary_history``).
        out_dir (str | Path): the run's output directory.
        gate (str | None): where the forgetting gate was crossed (``canary.gate_limit``), marked
            in the report.

    Returns:
        dict: the content written to ``retention.json``.

    Raises:
        ValueError: an empty or malformed history.
    """
    check_canary_history(history)
    last = history[-1]
    report = retention_report(
        general_base=last["general_base"],
        general_adapted=last["general_loss"],
        domain_base=last["domain_base"],
        domain_adapted=last["domain_loss"],
        metadata={"source": "canary", "step": last["step"]}
        | ({"forgetting_gate": f"crossed at {gate}"} if gate else {}),
    )
    write_retention_report(out_dir, report, history)
    return report.to_json()


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2%}"


def _save_figure(fig: Figure, path: str | Path) -> Path:
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")  # explicit: staged temp files have no .png suffix
    return out
