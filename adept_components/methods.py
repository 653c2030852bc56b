"""The method table: what ADEPT and each of its baselines and ablations does, in one place.

Every method is stage 1 (which layers, copied or not) plus stage 2 (which weights train, how
their learning rates are set). The recipe looks a method up here and never tests its name, so
a new method is one row::

    METHODS["uniform_decoupled"] = Method(
        "uniform_decoupled", select="uniform", expand=True, decoupled=True,
        summary="LLaMA-Pro's evenly spaced copies with ADEPT's per-unit learning rates",
    )
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Selection = Literal["probe", "uniform", "random", "spectrum"]
SELECTIONS: tuple[str, ...] = ("probe", "uniform", "random", "spectrum")


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the method table.

    Attributes:
        name (str): the ``method`` value of the config.
        select (str | None): how stage 1 picks layers: ``"probe"`` (the k least critical on
            the general probe, spec S1.2-S1.3), ``"uniform"`` (evenly spaced, LLaMA-Pro),
            ``"random"`` (k seeded at random), ``"spectrum"`` (no layers: the top-SNR fraction
            of each kind of weight matrix, ``expansion.spectrum_fraction``, data-free); None
            picks none and every weight trains.
            ``expansion.layers`` (an explicit list) overrides the choice for any method that
            selects; ``expansion.profile`` (a saved probe) stands in for ``"probe"``.
        expand (bool): insert a function-preserving copy after each selected layer and train
            only the copies; False trains the selected original layers themselves.
        decoupled (bool): one learning rate per unit, scaled by unit importance on the probe
            and re-scored every ``unit_tuning.refresh_every`` steps (spec S2); False gives
            every trained weight the scheduled learning rate.
        adapters (bool): train low-rank adapters (LoRA, the ``lora`` section) on the linear
            layers of every block instead of any weight; selects and expands nothing.
        summary (str): one line for the docs and ``--help``.

    Raises:
        ValueError: on construction, an unknown ``select``, or ``expand``/``decoupled``
            without a selection.
    """

    name: str
    select: Selection | None
    expand: bool
    decoupled: bool
    adapters: bool = False
    summary: str = ""

    def __post_init__(self) -> None:
        if self.select is not None and self.select not in SELECTIONS:
            raise ValueError(
                f"method {self.name!r}: select={self.select!r} is not one of {list(SELECTIONS)}"
            )
        if self.select is None and (self.expand or self.decoupled):
            raise ValueError(
                f"method {self.name!r} expands or decouples but selects no layers: set select"
            )
        if self.adapters and (self.select is not None or self.decoupled):
            raise ValueError(
                f"method {self.name!r}: adapters train on every block; they neither select "
                "nor decouple"
            )
        if self.select == "spectrum" and (self.expand or self.decoupled):
            raise ValueError(
                f"method {self.name!r}: select='spectrum' picks matrices, not layers; it can "
                "neither expand nor decouple"
            )

    @property
    def trains(self) -> Literal["copies", "selected", "matrices", "adapters", "all"]:
        """What stage 2 trains: the copies, the selected original layers, the selected
        original matrices (Spectrum), low-rank adapters, or every weight."""
        if self.adapters:
            return "adapters"
        if self.expand:
            return "copies"
        if self.select == "spectrum":
            return "matrices"
        return "selected" if self.select is not None else "all"

    @property
    def needs_probe_data(self) -> bool:
        """Whether the run reads the general probe set (to select layers or score units)."""
        return self.select == "probe" or self.decoupled


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("adept", "probe", expand=True, decoupled=True, summary="ADEPT: both stages"),
        Method("full", None, expand=False, decoupled=False, summary="full continual pretraining"),
        Method(
            "llama_pro",
            "uniform",
            expand=True,
            decoupled=False,
            summary="LLaMA-Pro: evenly spaced copies, one learning rate",
        ),  # fmt: skip
        Method(
            "no_stage1",
            "probe",
            expand=False,
            decoupled=True,
            summary="no expansion: the k least critical original layers train, decoupled",
        ),  # fmt: skip
        Method(
            "no_stage2",
            "probe",
            expand=True,
            decoupled=False,
            summary="ADEPT's copies, one learning rate",
        ),  # fmt: skip
        Method(
            "random",
            "random",
            expand=True,
            decoupled=True,
            summary="k random copies, decoupled",
        ),  # fmt: skip
        Method(
            "spectrum",
            "spectrum",
            expand=False,
            decoupled=False,
            summary="Spectrum: the top-SNR share of each kind of original matrix, one lr",
        ),  # fmt: skip
        Method(
            "lora",
            None,
            expand=False,
            decoupled=False,
            adapters=True,
            summary="LoRA: low-rank adapters on every block's linear layers, merged on save",
        ),  # fmt: skip
    )
}
