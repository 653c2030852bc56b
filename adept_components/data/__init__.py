"""Data for ADEPT: the general-domain probe set (S1.1) and the packed domain corpus (S2.5)."""

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
    "PackedText",
    "ProbeData",
    "ProbeKind",
    "ProbeSample",
    "ProbeSetInfo",
    "epoch_order",
    "packed_text_dataset",
    "probe_batches",
    "probe_dataset",
    "probe_mixture",
]
