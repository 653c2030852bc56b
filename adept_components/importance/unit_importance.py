"""S2.2 unit importance: how much each trainable tensor matters for general competence, now.

For every unit ``U`` (one parameter tensor of a copy, spec S2.1)::

    I_U = mean over the elements of U of |θ| ⊙ (1/B) · Σ_b |g_b|

where ``g_b`` is the gradient of batch ``b``'s probe loss (token-mean cross-entropy over its
supervised labels; pads and instruction prompts never count) and ``B`` the number of batches.
Absolute values, as in all reference code, and a mean, not a sum, so large tensors are not
favoured (spec "Reference code bugs"). Because ``|θ|`` does not change during the probe,
``Σ_elements |θ| · Σ_b |g_b| = Σ_b Σ_elements |θ| · |g_b|``: only one float64 scalar per unit
is accumulated, never a parameter-sized buffer.

The refresh (S2.4) runs in the middle of training, so the probe pass leaves no trace:

- ``.grad``: every parameter's ``.grad`` is saved, set to None for the pass and restored (the
  same tensor objects) afterwards. At an optimizer-step boundary, where the recipe calls it,
  the gradients are None, so this is spec S2.2's "cleared before and after"; called inside a
  gradient-accumulation window it keeps the partial sums instead of silently dropping them.
  Gradients come from ``torch.autograd.grad`` (whole model) or are consumed by a hook the moment
  they are accumulated (FSDP2, below): no probe gradient can reach an optimizer step.
- no optimizer step, no ``requires_grad`` flag changed (frozen layers stay frozen, so autograd
  never runs below the lowest trainable layer), eval mode during the pass (no dropout) with
  every module's own train/eval flag restored, and the CPU and CUDA RNG states restored.

The loss is computed from the model's own ``forward`` (``model(tokens)``), so wrapped models
work as they train: activation checkpointing (wrapper segments are stripped from the names),
chunked output projections (``set_num_output_chunks``) and FSDP2.

Distributed: when ``torch.distributed`` is initialised (or a ``group`` is passed), every rank
is given the *same* list of batches and processes ``batches[rank::world]``; the per-unit sums
and the batch count are all-reduced, so every rank returns the one-process result. Every rank
of the group must make the call.

FSDP2 (``fully_shard``, DTensor parameters; ``group`` must be the group the model is sharded
over, the default). FSDP's reduce-scatter sums the gradients of *different* batches (one per
rank) before anything else could see them, and ``|g_a + g_b| ≠ |g_a| + |g_b|``: the sharded
``.grad`` cannot give this score. Instead, a forward pre-hook on each unit's owning module
picks up the unsharded parameter FSDP registered for the forward, the backward accumulates
into that tensor only, and a post-accumulate-grad hook adds ``Σ |θ| · |g_b|`` over the full
tensor (all-gathered at that moment) and drops the gradient at once. FSDP then has nothing to
reduce-scatter, no gradient communication happens and the sharded training gradients are
never touched; memory stays as in a training backward. Each rank's sums cover its own batches
over whole tensors, and the all-reduce adds them up: the same result as spec S2.2's per-shard
sums, without the reduce-scatter. FSDP runs collectives inside every forward and backward, so
all ranks must run the same number of passes: a rank with fewer batches (``B`` not a multiple
of the world size), and any batch without a supervised token, runs a zero-weight pass, which
adds exactly 0 and does not count in ``B``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX

from adept_components.distributed import global_means, rank_and_world
from adept_components.importance.layer_importance import Batch, _check_batches, _device
from adept_components.losses import eval_mode, output_loss_sum, shift_labels
from adept_components.optim.unit_groups import clean_param_name
from adept_components.progress import progress_bar

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch without distributed
    DTensor = ()  # type: ignore[assignment,misc]


def unit_importance(
    model: nn.Module,
    batches: Sequence[Batch],
    units: Sequence[str] | None = None,
    group: dist.ProcessGroup | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """S2.2 importance of every unit: mean over its elements of ``|θ| · mean_b |g_b|``.

    Leaves no trace on training (see the module docstring): gradients, optimizer, modes,
    ``requires_grad`` flags and RNG states are as before the call.

    Args:
        model (nn.Module): a torchtune ``TransformerDecoder``, possibly wrapped by activation
            checkpointing or sharded with FSDP2 (``fully_shard`` on the layers and the root).
        batches (Sequence[Batch]): ``(tokens, labels)`` pairs, each [b, s], right-padded with
            ignored labels (``probe_batches``); the same list on every rank. A batch with no
            supervised token is skipped and does not count in ``B``.
        units (Sequence[str] | None): unit names as in the bare model's ``state_dict``
            (``layers.27.attn.q_proj.weight``; wrapper segments are ignored), each a parameter
            with ``requires_grad``. Default: every parameter with ``requires_grad`` (after
            ``freeze_all_but``: the units of the copies).
        group (dist.ProcessGroup | None): process group to share the batches over; default:
            the world when ``torch.distributed`` is initialised. Under FSDP2 it must be the
            group the model is sharded over.
        progress (bool): show a bar of this rank's batches.

    Returns:
        dict[str, float]: unit name -> score (>= 0), in the order of ``units`` (default:
        model order); the input of ``lr_scales``.

    Raises:
        ValueError: no batches, malformed batches, a sequence longer than the model's RoPE
            cache, or no supervised token in the whole probe; ``units`` empty, repeating a
            name, naming no parameter or a frozen one; or the model has no trainable
            parameter (default ``units``).
    """
    chosen, sums = _importance_sums(model, batches, units, group, progress, rows=False)
    return {
        name: float(total) / param.numel()
        for (name, _, param), total in zip(chosen, sums, strict=True)
    }


def row_importance(
    model: nn.Module,
    batches: Sequence[Batch],
    units: Sequence[str] | None = None,
    group: dist.ProcessGroup | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """S2.2 importance at the granularity of rows (``unit_tuning.units=rows``).

    Every row (output neuron) of a matrix is a unit: ``mean over the row of |θ| · mean_b |g_b|``;
    a vector (a norm scale) stays one unit. Same pass, same guarantees as ``unit_importance``.

    Returns:
        dict[str, torch.Tensor]: unit tensor name -> float64 scores, ``[rows]`` for a matrix,
        ``[1]`` for a vector, on CPU.
    """
    chosen, sums = _importance_sums(model, batches, units, group, progress, rows=True)
    return {
        name: (total / (param.shape[1] if param.dim() == 2 else param.numel())).cpu()
        for (name, _, param), total in zip(chosen, sums, strict=True)
    }


def _importance_sums(
    model: nn.Module,
    batches: Sequence[Batch],
    units: Sequence[str] | None,
    group: dist.ProcessGroup | None,
    progress: bool,
    rows: bool,
) -> tuple[list[_Unit], list[torch.Tensor]]:
    """``Σ_elements |θ| · mean_b |g_b|`` per unit (per row of each matrix with ``rows``)."""
    _check_batches(model, batches)
    chosen = _unit_params(model, units)
    sharded = any(isinstance(param, DTensor) for _, _, param in chosen)
    rank, world = rank_and_world(group)
    steps = math.ceil(len(batches) / world) if sharded else None
    device = _device(model)
    widths = [_width(param, rows) for _, _, param in chosen]
    gradients = (
        _ShardedUnitGradients(model, chosen, widths) if sharded else _UnitGradients(chosen, widths)
    )
    # [Σ_b Σ_elements |θ|·|g_b| per unit (or row) ..., batches counted]
    totals = torch.zeros(sum(widths) + 1, dtype=torch.float64, device=device)
    saved_grads = [(param, param.grad) for param in model.parameters()]
    try:
        for param, _ in saved_grads:
            param.grad = None
        passes = list(_rank_passes(batches, rank, world, steps))
        bar = progress_bar(len(passes), "unit importance (batch)", progress)
        with eval_mode(model), _rng_preserved(), torch.enable_grad(), gradients, bar:
            for (tokens, labels), counts in passes:
                bar.update()
                num_supervised = int((shift_labels(labels) != CROSS_ENTROPY_IGNORE_IDX).sum())
                counts = counts and num_supervised > 0
                if not counts and steps is None:
                    continue  # a whole model needs no lockstep: skip the empty batch
                loss_sum = _loss_sum(model, tokens.to(device), labels.to(device))
                # Token mean; weight 0 keeps an FSDP rank in step without adding anything.
                loss = loss_sum / num_supervised if counts else loss_sum * 0.0
                totals[:-1] += gradients.weighted_abs_sums(loss)
                totals[-1] += int(counts)
    finally:
        for param, grad in saved_grads:
            param.grad = grad
    per_batch, _ = global_means(totals, group)  # Σ_elements |θ| · mean_b |g_b|
    flat = torch.tensor(per_batch, dtype=torch.float64)
    return chosen, list(torch.split(flat, widths))


def _width(param: torch.Tensor, rows: bool) -> int:
    """How many scores a unit tensor gets: its rows (a matrix, with ``rows``) or 1."""
    return param.shape[0] if rows and param.dim() == 2 else 1


_Unit = tuple[str, str, torch.Tensor]  # (unit name, raw parameter name, parameter)


def _unit_params(model: nn.Module, units: Sequence[str] | None) -> list[_Unit]:
    """Resolve unit names to ``(name, raw name, parameter)``, model order unless given."""
    by_name = {clean_param_name(raw): (raw, param) for raw, param in model.named_parameters()}
    if units is None:
        names = [name for name, (_, param) in by_name.items() if param.requires_grad]
        if not names:
            raise ValueError(
                "the model has no trainable parameter, so there is no unit to score: call "
                "freeze_all_but(model, metadata.copy_positions) first, or pass units="
            )
    else:
        if isinstance(units, str):
            raise ValueError(f"units={units!r} must be a list of unit names, not one string")
        names = [clean_param_name(unit) for unit in units]
        if not names:
            raise ValueError("units is empty: pass at least one unit name, or None for all")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"units repeats {duplicates}")
        unknown = [name for name in names if name not in by_name]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(by_name), n=3)
            raise ValueError(
                f"units {unknown} name no parameter of the model (closest to {unknown[0]!r}: "
                f"{close})"
            )
        frozen = [name for name in names if not by_name[name][1].requires_grad]
        if frozen:
            raise ValueError(
                f"units {frozen} are frozen (requires_grad=False): only trainable tensors are "
                "units; unfreeze them (freeze_all_but) or leave them out"
            )
    return [(name, *by_name[name]) for name in names]


def _rank_passes(
    batches: Sequence[Batch], rank: int, world: int, steps: int | None
) -> Iterator[tuple[Batch, bool]]:
    """This rank's ``(batch, counts)`` passes: ``batches[rank::world]``, padded to ``steps``.

    Padding passes reuse batch 0 with ``counts=False`` (weight 0), so every rank of an FSDP
    group runs the same number of forwards and backwards.
    """
    mine = batches[rank::world]
    for batch in mine:
        yield batch, True
    for _ in range((steps or 0) - len(mine)):
        yield batches[0], False


def _loss_sum(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over supervised positions, from ``model(tokens)``.

    The model's own forward (not its submodules one by one) so that FSDP2's root hooks
    unshard the embeddings and head, and wrappers behave as in training.
    """
    output = model(tokens)
    if getattr(model, "output_hidden_states", None):
        output = output[-1]  # [*hidden states, logits]
    return output_loss_sum(output, shift_labels(labels))  # logits, chunks or deferred chunks


def _weighted_abs_sum(param: torch.Tensor, grad: torch.Tensor | None, width: int) -> torch.Tensor:
    """``Σ_elements |θ| · |g|`` in float64, ``[width]``: per row when ``width > 1``, else whole
    (0 for an unused tensor)."""
    if grad is None:
        return torch.zeros(width, dtype=torch.float64, device=param.device)
    product = grad.detach().float().abs() * param.detach().float().abs()
    if width > 1:
        return product.sum(dim=1, dtype=torch.float64)
    return torch.sum(product, dtype=torch.float64).reshape(1)


class _UnitGradients:
    """Per-unit ``Σ |θ| · |g_b|`` of one batch, for a model whole on this rank.

    ``torch.autograd.grad`` returns the gradients without touching any ``.grad`` (and
    without firing post-accumulate hooks such as an optimizer-in-backward's).
    """

    def __init__(self, units: list[_Unit], widths: list[int]) -> None:
        self._params = [param for _, _, param in units]
        self._widths = widths

    def __enter__(self) -> _UnitGradients:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def weighted_abs_sums(self, loss: torch.Tensor) -> torch.Tensor:
        """[num_units] float64 sums for the batch whose loss is ``loss``."""
        grads = torch.autograd.grad(loss, self._params, allow_unused=True)
        return torch.cat(
            [
                _weighted_abs_sum(p, g, w)
                for p, g, w in zip(self._params, grads, self._widths, strict=True)
            ]
        )


class _ShardedUnitGradients:
    """Per-unit ``Σ |θ| · |g_b|`` of one batch under FSDP2, from the unsharded tensors.

    While a module runs, FSDP2 registers the all-gathered (unsharded) parameter on it in
    place of the sharded DTensor; a forward pre-hook on each unit's owning module records
    that tensor. The backward accumulates into those tensors only (``inputs=``), and a
    post-accumulate-grad hook, which runs while the data is still gathered, adds the sum and
    sets the gradient to None, so FSDP's post-backward finds nothing to reduce-scatter.
    """

    def __init__(self, model: nn.Module, units: list[_Unit], widths: list[int]) -> None:
        self._model = model
        self._widths = widths
        self._offsets = [sum(widths[:i]) for i in range(len(widths))]
        self._owners: list[tuple[nn.Module, str]] = []
        for _, raw, _ in units:
            module_path, _, attribute = raw.rpartition(".")
            self._owners.append((model.get_submodule(module_path), attribute))
        self._used: dict[int, torch.Tensor] = {}  # unit index -> tensor of this forward
        self._sums = torch.zeros(0, dtype=torch.float64)  # set per batch
        self._hooked: dict[int, tuple[torch.Tensor, RemovableHandle]] = {}  # id -> (t, handle)
        self._module_hooks: list[RemovableHandle] = []

    def __enter__(self) -> _ShardedUnitGradients:
        by_module: dict[int, tuple[nn.Module, list[tuple[int, str]]]] = {}
        for index, (module, attribute) in enumerate(self._owners):
            by_module.setdefault(id(module), (module, []))[1].append((index, attribute))
        for module, attributes in by_module.values():
            hook = functools.partial(self._record, attributes)
            self._module_hooks.append(module.register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._module_hooks:
            handle.remove()
        for _, handle in self._hooked.values():
            handle.remove()
        self._module_hooks.clear()
        self._hooked.clear()
        self._used.clear()

    def weighted_abs_sums(self, loss: torch.Tensor) -> torch.Tensor:
        """[num_units] float64 sums for the batch whose loss is ``loss``."""
        self._sums = torch.zeros(sum(self._widths), dtype=torch.float64, device=loss.device)
        torch.autograd.backward(loss, inputs=list(self._used.values()))
        self._used.clear()
        return self._sums

    def _record(self, attributes: list[tuple[int, str]], module: nn.Module, _: object) -> None:
        for index, attribute in attributes:
            tensor = getattr(module, attribute)
            self._used[index] = tensor
            # Activation checkpointing re-runs the forward in backward: hook each tensor once.
            if id(tensor) not in self._hooked:
                hook = functools.partial(self._accumulate, index)
                handle = tensor.register_post_accumulate_grad_hook(hook)
                self._hooked[id(tensor)] = (tensor, handle)

    def _accumulate(self, index: int, tensor: torch.Tensor) -> None:
        start, width = self._offsets[index], self._widths[index]
        self._sums[start : start + width] += _weighted_abs_sum(tensor, tensor.grad, width)
        tensor.grad = None


def _rng_preserved() -> contextlib.AbstractContextManager[None]:
    """The CPU and (initialised) CUDA generators' states restored on exit.

    The probe draws no random numbers in eval mode, but activation checkpointing saves and
    re-seeds RNG states around its recompute: restoring them makes "unchanged" a guarantee.
    CUDA devices are forked only once CUDA is initialised, so a CPU run never initialises it.
    """
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=cuda, device_type="cuda")


def unit_conflict(
    model: nn.Module,
    general: Sequence[Batch],
    domain: Sequence[Batch],
    units: Sequence[str] | None = None,
    group: dist.ProcessGroup | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """How much the domain gradient of each unit opposes its general gradient, in [0, 1].

    ``C_U = max(0, −cos(ḡ_domain,U, ḡ_general,U))``: the negative part of the cosine between
    the unit's mean gradient on domain batches and on the general probe. A unit whose domain
    step would raise the general loss scores up to 1, a neutral or agreeing one 0. As the
    ``importance`` of ``lr_scales`` (``unit_tuning.scoring=conflict``), the units the domain
    pushes against general competence learn slowest.

    Like ``unit_importance`` it leaves no trace (gradients, modes, RNG restored). The mean
    gradients are kept for the trained units (two parameter-sized fp32 buffers); under FSDP2
    each rank keeps its shards (the gradient is linear in the batches, so FSDP's own
    reduce-scatter gives the sum) and the three per-unit sums are all-reduced.

    Args:
        model (nn.Module): the decoder, as for ``unit_importance``.
        general (Sequence[Batch]): the general probe batches.
        domain (Sequence[Batch]): domain batches (a fixed sample of the training corpus).
        units (Sequence[str] | None): as for ``unit_importance``.
        group (dist.ProcessGroup | None): as for ``unit_importance``.
        progress (bool): show a bar.

    Returns:
        dict[str, float]: unit name -> conflict in [0, 1] (0 for a unit without gradient).
    """
    _check_batches(model, general)
    _check_batches(model, domain)
    chosen = _unit_params(model, units)
    mean_general = _mean_gradients(model, general, chosen, group, progress, "general")
    mean_domain = _mean_gradients(model, domain, chosen, group, progress, "domain")
    device = _device(model)
    sums = torch.zeros(len(chosen), 3, dtype=torch.float64, device=device)
    for i, (a, b) in enumerate(zip(mean_domain, mean_general, strict=True)):
        a, b = a.double(), b.double()
        sums[i] = torch.stack([(a * b).sum(), (a * a).sum(), (b * b).sum()])
    if rank_and_world(group)[1] > 1 and any(isinstance(p, DTensor) for _, _, p in chosen):
        dist.all_reduce(sums, group=group)  # shards of the same tensors: add the pieces
    out = {}
    for (name, _, _), (dot, aa, bb) in zip(chosen, sums.tolist(), strict=True):
        norm = math.sqrt(aa * bb)
        out[name] = max(0.0, -dot / norm) if norm > 0 else 0.0
    return out


def _mean_gradients(
    model: nn.Module,
    batches: Sequence[Batch],
    chosen: list[_Unit],
    group: dist.ProcessGroup | None,
    progress: bool,
    what: str,
) -> list[torch.Tensor]:
    """Each unit's gradient summed over this rank's batches (token-mean loss per batch).

    Under FSDP2 the backward's reduce-scatter adds the ranks' batches: each rank then holds its
    shard of the sum over all batches. Scale does not matter to the cosine.
    """
    sharded = any(isinstance(param, DTensor) for _, _, param in chosen)
    rank, world = rank_and_world(group)
    steps = math.ceil(len(batches) / world) if sharded else None
    device = _device(model)
    saved_grads = [(param, param.grad) for param in model.parameters()]
    try:
        for param, _ in saved_grads:
            param.grad = None
        passes = list(_rank_passes(batches, rank, world, steps))
        bar = progress_bar(len(passes), f"unit conflict ({what} batch)", progress)
        with eval_mode(model), _rng_preserved(), torch.enable_grad(), bar:
            for (tokens, labels), counts in passes:
                bar.update()
                num_supervised = int((shift_labels(labels) != CROSS_ENTROPY_IGNORE_IDX).sum())
                counts = counts and num_supervised > 0
                if not counts and steps is None:
                    continue
                loss_sum = _loss_sum(model, tokens.to(device), labels.to(device))
                loss = loss_sum / num_supervised if counts else loss_sum * 0.0
                loss.backward()
        out = []
        for _, _, param in chosen:
            grad = param.grad
            if grad is None:
                out.append(torch.zeros((), device=device))
                continue
            local = grad.to_local() if isinstance(grad, DTensor) else grad
            out.append(local.detach().float().clone())
        return out
    finally:
        for param, grad in saved_grads:
            param.grad = grad
