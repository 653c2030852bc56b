"""Data for ADEPT: the general-domain probe set (S1.1), the packed domain corpus (S2.5) and
replay mixtures of several corpora."""

from adept_components.data.mixture import MixedText, MixtureShare, mixed_text_dataset
from adept_components.data.order import epoch_order
from adept_components.data.packed_text import CorpusInfo, PackedText, packed_text_dataset
from adept_components.data.probe import (
    ProbeData,
    ProbeKind,
    ProbeSample,
    ProbeSetInfo,
    probe_batches,
    probe_dataset,
    probe_mixture,
)

__all__ = [
    "CorpusInfo",
    "MixedText",
    "MixtureShare",
    "PackedText",
    "ProbeData",
    "ProbeKind",
    "ProbeSample",
    "ProbeSetInfo",
    "epoch_order",
    "mixed_text_dataset",
    "packed_text_dataset",
    "probe_batches",
    "probe_dataset",
    "probe_mixture",
]
