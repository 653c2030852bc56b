"""Size a run before any GPU hours: ``adept-cpt plan`` (parameters, memory, FLOPs, time).

``activations`` walks one micro-batch op by op (what autograd saves, what the backward
allocates, the FLOPs); ``estimate`` builds each method's model on the meta device with the
project's own expansion and trainable sets and adds weights, gradients, optimizer state and
FSDP2 sharding; ``report`` prints it.
"""

from adept_components.planning.activations import MicroBatch, Precision, micro_batch
from adept_components.planning.estimate import (
    GIB,
    Batching,
    Fix,
    Memory,
    MethodEstimate,
    Planner,
    SizedModel,
    base_builder,
    recipe_loss,
    size_method,
)
from adept_components.planning.report import render_plan

__all__ = [
    "GIB",
    "Batching",
    "Fix",
    "Memory",
    "MethodEstimate",
    "MicroBatch",
    "Planner",
    "Precision",
    "SizedModel",
    "base_builder",
    "micro_batch",
    "recipe_loss",
    "render_plan",
    "size_method",
]
