"""Evaluation of an adapted model: the retention report, tokenizer checks, lm-eval benchmarks.

``harness`` (lm-evaluation-harness) is not imported here: lm-eval is an optional dependency.
"""

from adept_components.evaluation.retention import (
    HeldOutComparison,
    RetentionReport,
    check_canary_history,
    plot_canary,
    plot_retention,
    retention_from_canary,
    retention_report,
    write_retention_report,
)
from adept_components.evaluation.tokenizer_match import check_same_tokenizer, tokenizer_file_digests

__all__ = [
    "HeldOutComparison",
    "RetentionReport",
    "check_canary_history",
    "check_same_tokenizer",
    "plot_canary",
    "plot_retention",
    "retention_from_canary",
    "retention_report",
    "tokenizer_file_digests",
    "write_retention_report",
]
