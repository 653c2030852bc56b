"""Data for ADEPT: the general-domain probe set (spec S1.1)."""

from adept_components.data.probe import (
    ProbeData,
    ProbeKind,
    ProbeSample,
    ProbeSetInfo,
    probe_batches,
    probe_dataset,
)

__all__ = [
    "ProbeData",
    "ProbeKind",
    "ProbeSample",
    "ProbeSetInfo",
    "probe_batches",
    "probe_dataset",
]
