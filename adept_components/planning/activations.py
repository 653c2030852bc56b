"""What one training micro-batch holds in memory and costs in FLOPs, derived op by op.

Sizing a run needs the activation memory of *partial* training: in ADEPT only the copies
train, so a layer below the first trained one builds no autograd graph (its input does not
require grad and none of its weights train), and a frozen layer above it keeps only what the
gradient *of its input* needs. Which tensors autograd keeps depends on which inputs require
grad, so a closed formula per model would be wrong for every method but one. Instead this
module walks a built decoder (the meta model of ``planning.estimate``, after expansion and the
``TrainableSet``) the way the recipe runs it, and writes down, per op, the tensors it creates,
the ones autograd saves for its backward, and its FLOPs. What each op saves is PyTorch's own
rule for it (``tools/autograd/derivatives.yaml``, with its conditional saving: an input is kept
only when the gradient of the *other* operand needs it):

======================  ==========================================================================
op                      saved for backward (bytes per token; ``D`` the activation dtype's bytes)
======================  ==========================================================================
RMSNorm (fp32 inside)   input as fp32 and ``rsqrt`` (4 per row) if the input requires grad; the
                        normalised input (fp32) if the gain trains; Gemma's ``1 + w`` vector
linear ``x W^T``        ``x`` if ``W`` trains (the weight itself costs nothing more); under
                        autocast (``trainable_dtype: fp32``) the bf16 copy of ``W`` if ``x``
                        requires grad
RoPE (rotate-half)      ``cos``/``sin`` cast to bf16 in a bf16 run (a ``[s, head_dim]`` pair per
                        call); nothing per token (the cache is a buffer)
GQA expand              nothing; it *creates* ``k`` and ``v`` with ``n_heads`` heads (a copy)
SDPA (flash / memory-   ``q``, expanded ``k`` and ``v``, the output and the log-sum-exp (fp32,
efficient)              one per head): no ``s x s`` matrix. The output is laid out
                        ``[b, s, heads, head_dim]``, so ``o_proj``'s ``.contiguous()`` copies
                        nothing. A sliding window adds its ``s x s`` additive mask
SiLU / GELU             the input if it requires grad
gate * up               each operand if the other requires grad
head + cross-entropy    deferred head (``ChunkedHeadCrossEntropy``): the final hidden states and
                        the targets only (each chunk is recomputed in the backward); chunked
                        logits: ``log_softmax`` of every chunk, fp32
======================  ==========================================================================

``tests/test_planning.py`` checks these saved bytes against autograd's own
(``saved_tensors_hooks``) exactly, for Qwen3, Llama and Gemma 3 layers, frozen and trained, in
fp32 and bf16. Peak memory then comes from replaying the tape: forward (values live until
their last use unless saved), then the backward in reverse op order, as PyTorch's engine runs
it (gradients of values appear when first needed and go when their producer has run, saved
tensors go when the last op keeping them has run, parameter gradients stay). Activation
checkpointing (torchtune's per-layer wrapper, non-reentrant) keeps each graph layer's input
instead of its saved tensors and recomputes one layer at a time in the backward.

FLOPs per op (matmuls and attention only; norms, softmax and element-wise ops left out): a
linear costs ``2·W`` per token forward, ``2·W`` backward for its input gradient if its input
requires grad, and ``2·W`` for its weight gradient if ``W`` trains; attention costs
``4·c·n_h·d_h`` forward and twice that backward (``c`` the mean causal context, ``(s+1)/2``,
or within a sliding window). So a partly trained model costs
``2·P_total + 2·P_above + 2·P_trained`` per token, ``P_above`` the weights at or above the
first trained layer (their input gradients), not ``6·P_trained``. Recomputation (activation
checkpointing, the deferred head) is counted apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from torch import nn
from torchtune.models.gemma.gemma_norm_embedding import GemmaNormEmbeddings
from torchtune.models.gemma.rms_norm import GemmaRMSNorm
from torchtune.models.qwen2 import Qwen2RotaryPositionalEmbeddings
from torchtune.modules import TiedLinear
from torchtune.modules.peft import LoRALinear

_FP32 = 4
_BF16 = 2
_INT64 = 8


@dataclasses.dataclass
class _Value:
    """A tensor of the step: its size and whether it requires grad."""

    nbytes: int
    dtype_bytes: int
    requires_grad: bool


@dataclasses.dataclass
class _Op:
    """One op (or one small module) of the forward, as the backward will see it.

    Attributes:
        reads: values it reads; gradients flow back to those that require grad.
        makes: values it creates (its outputs and what it saves that nothing else made).
        saved: values autograd keeps for its backward.
        holds: values it keeps alive in the forward without reading them (the logits list).
        weight_grad: bytes of parameter gradients its backward writes.
        forward_temp, backward_temp: bytes allocated and freed inside its forward/backward.
        flops_forward, flops_backward, flops_recompute: per micro-batch.
        graph: it runs in the backward even though it makes nothing (a checkpointed chunk).
        layer: the decoder layer it belongs to (None: embedding, final norm, head).
    """

    reads: tuple[int, ...]
    makes: tuple[int, ...]
    saved: tuple[int, ...] = ()
    holds: tuple[int, ...] = ()
    weight_grad: int = 0
    forward_temp: int = 0
    backward_temp: int = 0
    flops_forward: float = 0.0
    flops_backward: float = 0.0
    flops_recompute: float = 0.0
    graph: bool = False
    layer: int | None = None


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """Memory and FLOPs of one micro-batch's forward and backward.

    Attributes:
        saved_bytes (int): what autograd holds at the end of the forward (the activations:
            saved tensors, the checkpointed layers' inputs, the step's tokens and targets).
        peak_bytes (int): the most the forward and backward allocate at once, parameter
            gradients included (they appear during the backward), over the resident weights
            and optimizer state.
        grad_bytes (int): the parameter gradients the backward writes.
        peak_grad_bytes (int): the parameter gradients already written at the peak (the rest
            of ``peak_bytes`` is activations, their gradients and temporaries).
        activation_bytes (int): the most the activations alone take at once (saved tensors,
            their gradients, op temporaries; parameter gradients left out).
        flops (float): model FLOPs (forward and backward, no recomputation).
        recompute_flops (float): FLOPs spent recomputing (checkpointed layers, deferred head).
        graph_layers (tuple[int, ...]): layers that build an autograd graph.
    """

    saved_bytes: int
    peak_bytes: int
    grad_bytes: int
    peak_grad_bytes: int
    activation_bytes: int
    flops: float
    recompute_flops: float
    graph_layers: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Precision:
    """How the run stores and computes tensors.

    Attributes:
        dtype_bytes (int): bytes per element of the run's dtype (4: fp32, 2: bf16).
        fp32_modules (frozenset[int]): ``id`` of the modules ``trainable_dtype: fp32`` keeps in
            fp32 and runs under bf16 autocast (``TrainableSet.fp32_modules``); empty in an fp32
            run or with ``trainable_dtype: null``.
    """

    dtype_bytes: int
    fp32_modules: frozenset[int] = frozenset()


class _Tape:
    """The ops of one micro-batch, recorded while walking the model."""

    def __init__(self, batch_size: int, seq_len: int) -> None:
        self.batch_size, self.seq_len = batch_size, seq_len
        self.tokens = batch_size * seq_len
        self.values: list[_Value] = []
        self.ops: list[_Op] = []
        self.layer: int | None = None
        self.pinned: tuple[int, ...] = ()  # alive for the whole step (the batch's tensors)

    def value(self, nbytes: int, dtype_bytes: int, requires_grad: bool) -> int:
        self.values.append(_Value(int(nbytes), dtype_bytes, requires_grad))
        return len(self.values) - 1

    def per_token(self, width: int, dtype_bytes: int, requires_grad: bool) -> int:
        """A ``[b, s, width]`` tensor."""
        return self.value(self.tokens * width * dtype_bytes, dtype_bytes, requires_grad)

    def op(self, reads: Iterable[int], makes: Iterable[int], **fields: object) -> None:
        self.ops.append(_Op(tuple(reads), tuple(makes), layer=self.layer, **fields))

    def requires_grad(self, key: int) -> bool:
        return self.values[key].requires_grad

    def dtype(self, key: int) -> int:
        return self.values[key].dtype_bytes


class _Walker:
    """Records the ops of a torchtune decoder's forward and loss on a ``_Tape``."""

    def __init__(self, model: nn.Module, tape: _Tape, precision: Precision) -> None:
        self.model, self.tape, self.precision = model, tape, precision
        self.autocast: set[int] = set()
        if precision.fp32_modules:
            self._mark_autocast(model, inside=False)

    def _mark_autocast(self, module: nn.Module, inside: bool) -> None:
        inside = inside or id(module) in self.precision.fp32_modules
        if inside:
            self.autocast.add(id(module))
        for child in module.children():
            self._mark_autocast(child, inside)

    def param_bytes(self, module: nn.Module) -> int:
        """Bytes per element of a module's parameters (fp32 when kept in fp32)."""
        return _FP32 if id(module) in self.autocast else self.precision.dtype_bytes

    # ------------------------------------------------------------------------- modules

    def norm(self, module: nn.Module, x: int, rows: int) -> int:
        """An RMSNorm over the last dimension (``rows`` normalised vectors per token)."""
        t = self.tape
        width = t.values[x].nbytes // (t.tokens * t.dtype(x))
        rg, trains = t.requires_grad(x), module.scale.requires_grad
        makes, saved = [], []
        x32 = x
        if t.dtype(x) != _FP32:  # x.float(): a copy
            x32 = t.per_token(width, _FP32, rg)
            makes.append(x32)
        if rg:
            rsqrt = t.per_token(rows, _FP32, True)
            makes.append(rsqrt)
            saved += [x32, rsqrt]
        if trains:
            normed = t.per_token(width, _FP32, rg)
            makes.append(normed)
            saved.append(normed)
        if isinstance(module, GemmaRMSNorm) and rg:  # 1 + w, kept for the input's gradient
            gain = t.value(module.scale.numel() * _FP32, _FP32, trains)
            makes.append(gain)
            saved.append(gain)
        out = t.per_token(width, t.dtype(x), rg or trains)
        makes.append(out)
        fp32 = t.tokens * width * _FP32
        t.op(
            [x],
            makes,
            saved=tuple(saved),
            weight_grad=module.scale.numel() * self.param_bytes(module) if trains else 0,
            forward_temp=2 * fp32,
            backward_temp=2 * fp32,
        )
        return out

    def linear(self, module: nn.Module, x: int) -> int:
        """``nn.Linear`` (no bias) or torchtune's ``LoRALinear``."""
        if isinstance(module, LoRALinear):
            base = self._matmul(module, module.weight, x, autocast=False)
            a = self._matmul(module.lora_a, module.lora_a.weight, x)
            b = self._matmul(module.lora_b, module.lora_b.weight, a)
            return self.add(base, b)
        return self._matmul(module, module.weight, x)

    def _matmul(
        self, module: nn.Module, weight: nn.Parameter, x: int, autocast: bool | None = None
    ) -> int:
        t = self.tape
        autocast = id(module) in self.autocast if autocast is None else autocast
        out_features, in_features = weight.shape
        inp = x
        if autocast and t.dtype(x) == _FP32:  # autocast casts a non-leaf input on every call
            inp = t.per_token(in_features, _BF16, t.requires_grad(x))
            t.op([x], [inp])
        trains, makes, saved = weight.requires_grad, [], []
        if trains:
            saved.append(inp)
        input_grad = t.requires_grad(inp)
        if autocast and input_grad:  # the bf16 copy of the fp32 weight, for the input's grad
            copy = t.value(weight.numel() * _BF16, _BF16, False)
            makes.append(copy)
            saved.append(copy)
        compute = _BF16 if autocast else t.dtype(inp)
        out = t.per_token(out_features, compute, input_grad or trains)
        makes.append(out)
        per_token = 2.0 * weight.numel() * t.tokens
        t.op(
            [inp],
            makes,
            saved=tuple(saved),
            weight_grad=weight.numel() * self.param_bytes(module) if trains else 0,
            flops_forward=per_token,
            flops_backward=per_token * (int(input_grad) + int(trains)),
        )
        return out

    def add(self, a: int, b: int) -> int:
        t = self.tape
        width = t.values[a].nbytes // (t.tokens * t.dtype(a))
        out = t.per_token(
            width, max(t.dtype(a), t.dtype(b)), t.requires_grad(a) or t.requires_grad(b)
        )
        t.op([a, b], [out])
        return out

    def rope(self, rope: nn.Module, x: int, heads: int, head_dim: int) -> int:
        """RoPE of ``[b, s, heads, head_dim]``: the cache is a buffer, nothing per token is kept."""
        t = self.tape
        makes, saved = [], []
        if (
            isinstance(rope, Qwen2RotaryPositionalEmbeddings)
            and t.dtype(x) != _FP32
            and t.requires_grad(x)
        ):
            for _ in ("cos", "sin"):  # rope_cache[...].to(x.dtype): a copy of the fp32 cache
                key = t.value(t.seq_len * head_dim * t.dtype(x), t.dtype(x), False)
                makes.append(key)
                saved.append(key)
        out = t.per_token(heads * head_dim, t.dtype(x), t.requires_grad(x))
        makes.append(out)
        t.op([x], makes, saved=tuple(saved), forward_temp=3 * t.tokens * heads * head_dim * _FP32)
        return out

    def attention(self, attn: nn.Module, x: int) -> int:
        """torchtune's ``MultiHeadAttention`` (Llama) or ``QKNormAttention`` (Qwen3, Gemma 3)."""
        t = self.tape
        heads, kv_heads, head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        q = self.linear(attn.q_proj, x)  # in the forward's order: q, then k and v
        if attn.q_norm is not None:
            q = self.norm(attn.q_norm, q, rows=heads)
        q = self.rope(attn.pos_embeddings, q, heads, head_dim)
        k = self.linear(attn.k_proj, x)
        v = self.linear(attn.v_proj, x)
        if attn.k_norm is not None:
            k = self.norm(attn.k_norm, k, rows=kv_heads)
        k = self.rope(attn.pos_embeddings, k, kv_heads, head_dim)
        if heads != kv_heads:  # unsqueeze/expand/flatten: a copy with every query head
            expanded = []
            for src in (k, v):
                key = t.per_token(heads * head_dim, t.dtype(src), t.requires_grad(src))
                t.op([src], [key])
                expanded.append(key)
            k, v = expanded
        rg = t.requires_grad(q) or t.requires_grad(k) or t.requires_grad(v)
        out = t.per_token(heads * head_dim, t.dtype(q), rg)
        lse = t.value(t.tokens * heads * _FP32, _FP32, False)
        makes, saved = [out, lse], [q, k, v, out, lse] if rg else []
        window = getattr(attn, "sliding_window", None)
        context = _mean_context(t.seq_len, window)
        if window is not None and t.seq_len > window and rg:  # the additive window mask
            mask = t.value(t.seq_len * t.seq_len * t.dtype(q), t.dtype(q), False)
            makes.append(mask)
            saved.append(mask)
        flops = 4.0 * context * heads * head_dim * t.tokens
        t.op(
            [q, k, v],
            makes,
            saved=tuple(saved),
            backward_temp=t.tokens * heads * head_dim * _FP32,  # the fp32 dq accumulator
            flops_forward=flops,
            flops_backward=2 * flops if rg else 0.0,
        )
        return self.linear(attn.output_proj, out)

    def layer(self, layer: nn.Module, x: int) -> int:
        """``TransformerSelfAttentionLayer``: pre-norm attention and gated MLP, residuals."""
        t = self.tape
        a = self.attention(layer.attn, self.norm(layer.sa_norm, x, rows=1))
        if not isinstance(layer.sa_scale, nn.Identity):
            a = self.norm(layer.sa_scale, a, rows=1)
        h = self.add(a, x)
        n = self.norm(layer.mlp_norm, h, rows=1)
        gate = self.linear(layer.mlp.w1, n)
        act = t.per_token(layer.mlp.w1.weight.shape[0], t.dtype(gate), t.requires_grad(gate))
        t.op([gate], [act], saved=(gate,) if t.requires_grad(gate) else ())
        up = self.linear(layer.mlp.w3, n)
        product = t.per_token(
            layer.mlp.w1.weight.shape[0], t.dtype(up), t.requires_grad(act) or t.requires_grad(up)
        )
        saved = tuple(key for key, other in ((act, up), (up, act)) if t.requires_grad(other))
        t.op([act, up], [product], saved=saved)
        m = self.linear(layer.mlp.w2, product)
        if not isinstance(layer.mlp_scale, nn.Identity):
            m = self.norm(layer.mlp_scale, m, rows=1)
        return self.add(h, m)

    def embedding(self) -> tuple[int, int]:
        """The step's tokens and targets, and the token embedding (Gemma: scaled)."""
        t, embed = self.tape, self.model.tok_embeddings
        tokens = t.per_token(1, _INT64, False)
        targets = t.per_token(1, _INT64, False)
        count = t.value(_INT64, _INT64, False)  # supervised tokens, the loss's divisor
        t.op([], [tokens, targets, count])
        t.pinned = (tokens, targets, count)  # train_step holds them until the step ends
        trains = embed.weight.requires_grad
        width, vocab = embed.embedding_dim, embed.num_embeddings
        out = t.per_token(width, self.param_bytes(embed), trains)
        tied = isinstance(self.model.output, TiedLinear)
        grad = vocab * width * self.param_bytes(embed) if trains else 0
        head_trains = tied and trains  # the head's gradient comes first; this one is added
        t.op(
            [tokens],
            [out],
            saved=(tokens,) if trains else (),
            weight_grad=0 if head_trains else grad,
            backward_temp=grad if head_trains else 0,
        )
        if isinstance(embed, GemmaNormEmbeddings):  # * tensor(sqrt(width)), kept if it trains
            scaled = t.per_token(width, t.dtype(out), trains)
            factor = t.value(t.dtype(out), t.dtype(out), False)
            t.op([out], [scaled, factor], saved=(factor,) if trains else ())
            out = scaled
        return out, targets

    def head_and_loss(self, hidden: int, targets: int, defer_head: bool, chunks: int) -> None:
        """Final hidden states -> token-mean cross-entropy, as the recipe's loss runs it."""
        t, head = self.tape, self.model.output
        weight = head.tied_module.weight if isinstance(head, TiedLinear) else head.weight
        vocab, width = weight.shape
        trains, rg = weight.requires_grad, t.requires_grad(hidden)
        chunk_tokens = t.batch_size * -(-t.seq_len // max(chunks, 1))
        logits = chunk_tokens * vocab  # elements of one chunk's logits
        wbytes = self.param_bytes(
            self.model.tok_embeddings if isinstance(head, TiedLinear) else head
        )
        grad = vocab * width * wbytes if trains else 0
        count = max(chunks, 1)
        per_chunk = 2.0 * chunk_tokens * vocab * width
        flops = {
            "flops_forward": per_chunk,
            "flops_backward": per_chunk * (int(rg) + int(trains)),
        }
        if defer_head:  # each chunk under torch.utils.checkpoint: hidden chunk + targets kept
            for index in range(count):
                t.op(
                    [hidden],
                    [],
                    saved=(hidden, targets) if rg or trains else (),
                    weight_grad=grad if index == count - 1 else 0,
                    backward_temp=3 * logits * _FP32 + (grad if index < count - 1 else 0),
                    forward_temp=2 * logits * _FP32,
                    flops_recompute=per_chunk if rg or trains else 0.0,
                    graph=rg or trains,
                    **flops,
                )
            return
        # torchtune's chunked_output: every chunk's logits inside the model's forward (under
        # autocast when the whole model is kept in fp32), then the loss on each, upcast.
        autocast = id(self.model) in self.autocast
        compute = _BF16 if autocast else t.dtype(hidden)
        inputs, copy = [hidden] * count, None
        if autocast and t.dtype(hidden) == _FP32:  # each chunk cast to bf16 for the matmul
            inputs = [t.value(chunk_tokens * width * _BF16, _BF16, rg) for _ in range(count)]
        if autocast and (rg or trains):  # the cached bf16 copy of the weight
            copy = t.value(vocab * width * _BF16, _BF16, False)
        outs = []
        for index, inp in enumerate(inputs):
            if inp != hidden:
                t.op([hidden], [inp])
            out = t.value(logits * compute, compute, rg or trains)
            makes = [out] + ([copy] if copy is not None and index == 0 else [])
            saved = ((inp,) if trains else ()) + ((copy,) if copy is not None and rg else ())
            t.op(
                [inp],
                makes,
                saved=saved,
                weight_grad=grad if index == count - 1 else 0,
                backward_temp=grad if index < count - 1 else 0,
                **flops,
            )
            outs.append(out)
        upcast = compute != _FP32
        for index, out in enumerate(outs):
            log_probs = t.value(logits * _FP32, _FP32, rg or trains)
            makes, saved = [log_probs], [log_probs, targets]
            if count > 1 and t.batch_size > 1:  # targets[:, chunk].flatten(): a copy
                flat = t.value(chunk_tokens * _INT64, _INT64, False)
                makes.append(flat)
                saved[1] = flat
            total_weight = t.value(_FP32, _FP32, False)  # nll_loss's 0-d total weight
            makes.append(total_weight)
            saved.append(total_weight)
            t.op(
                [out],
                makes,
                saved=tuple(saved) if rg or trains else (),
                holds=tuple(outs) if index == count - 1 else (),
                forward_temp=logits * _FP32 if upcast else 0,
                backward_temp=logits * _FP32 * (2 if upcast else 1),
            )

    def run(self, defer_head: bool, chunks: int) -> None:
        x, targets = self.embedding()
        for index, layer in enumerate(self.model.layers):
            self.tape.layer = index
            x = self.layer(layer, x)
        self.tape.layer = None
        hidden = self.norm(self.model.norm, x, rows=1)
        self.head_and_loss(hidden, targets, defer_head, chunks)


def _mean_context(seq_len: int, window: int | None) -> float:
    """Mean number of keys a query attends to: causal, within a sliding window if any."""
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def micro_batch(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    precision: Precision,
    defer_head: bool = True,
    num_output_chunks: int = 8,
    activation_checkpointing: bool = False,
    grads_resident: bool = False,
) -> MicroBatch:
    """Memory and FLOPs of one micro-batch of ``batch_size x seq_len`` tokens through ``model``.

    Args:
        model (nn.Module): the decoder as it trains (meta device is enough): expanded, with
            exactly the trained parameters requiring grad, adapters added.
        batch_size (int): sequences per micro-batch (per GPU).
        seq_len (int): tokens per sequence.
        precision (Precision): the run's dtype and the modules kept in fp32.
        defer_head (bool): the loss applies the head a chunk at a time (recomputed in the
            backward; ``ChunkedHeadCrossEntropy`` on one process); False: the model returns
            every chunk's logits (torchtune's chunked output, or any run under FSDP).
        num_output_chunks (int): chunks of the output along the sequence (0: whole logits).
        activation_checkpointing (bool): every decoder layer is checkpointed.
        grads_resident (bool): every parameter gradient exists already (a second or later
            micro-batch of gradient accumulation); they are then counted in neither number
            and each new gradient is a temporary added in place.

    Returns:
        MicroBatch: saved activations, peak, gradients and FLOPs.
    """
    tape = _Tape(batch_size, seq_len)
    walker = _Walker(model, tape, precision)
    walker.run(defer_head, num_output_chunks)
    graph_layers = tuple(
        sorted({op.layer for op in tape.ops if op.layer is not None and _has_graph(tape, op)})
    )
    checkpointed = set(graph_layers) if activation_checkpointing else set()
    saved, peak, peak_grads, activations, grads = _replay(tape, checkpointed, grads_resident)
    flops = sum(op.flops_forward for op in tape.ops)
    flops += sum(op.flops_backward for op in tape.ops if _has_graph(tape, op))
    recompute = sum(op.flops_recompute for op in tape.ops)
    recompute += sum(op.flops_forward for op in tape.ops if op.layer in checkpointed)
    return MicroBatch(saved, peak, grads, peak_grads, activations, flops, recompute, graph_layers)


def _has_graph(tape: _Tape, op: _Op) -> bool:
    """An op runs in the backward when something it made, or a parameter it used, needs grad."""
    return op.graph or op.weight_grad > 0 or any(tape.requires_grad(key) for key in op.makes)


def _replay(
    tape: _Tape, checkpointed: set[int], grads_resident: bool
) -> tuple[int, int, int, int, int]:
    """Replay forward then backward.

    Returns:
        tuple: bytes held after the forward, the peak, the parameter gradients at the peak,
        the peak of everything but parameter gradients, all parameter gradients.
    """
    values, ops = tape.values, tape.ops
    last_use: dict[int, int] = {}
    for index, op in enumerate(ops):
        for key in (*op.reads, *op.holds):
            last_use[key] = index
    first_op, layer_input = {}, {}
    for index, op in enumerate(ops):
        if op.layer is not None and op.layer not in first_op:
            first_op[op.layer] = index
            layer_input[op.layer] = op.reads[0]
    keep: dict[int, int] = {}  # value -> ops (or checkpointed layers) still keeping it
    for op in ops:
        if op.layer not in checkpointed:
            for key in set(op.saved):
                keep[key] = keep.get(key, 0) + 1
    for layer in checkpointed:
        key = layer_input[layer]
        keep[key] = keep.get(key, 0) + 1
    for key in tape.pinned:
        keep[key] = keep.get(key, 0) + 1

    live: dict[int, int] = {}
    peak, peak_grads, activations = 0, 0, 0

    def total() -> int:
        return sum(live.values())

    for index, op in enumerate(ops):
        for key in op.makes:
            live[key] = values[key].nbytes
        peak = max(peak, total() + op.forward_temp)
        activations = peak
        for key in list(live):
            if keep.get(key, 0) == 0 and last_use.get(key, -1) <= index:
                del live[key]
    saved = total()

    grads: dict[int, int] = {}
    parameter_grads = 0
    recomputed: set[int] = set()
    for index in range(len(ops) - 1, -1, -1):
        op = ops[index]
        if not _has_graph(tape, op):
            continue
        if op.layer in checkpointed and op.layer not in recomputed:
            recomputed.add(op.layer)  # the layer's forward again, keeping its saved tensors
            layer_ops = [o for o in ops if o.layer == op.layer]
            for o in layer_ops:
                for key in set(o.saved):
                    keep[key] = keep.get(key, 0) + 1
                    live[key] = values[key].nbytes
            temp = max(o.forward_temp for o in layer_ops)
            now = total() + sum(grads.values()) + temp
            activations = max(activations, now)
            if now + parameter_grads > peak:
                peak, peak_grads = now + parameter_grads, parameter_grads
        for key in op.reads:
            if values[key].requires_grad and key not in grads:
                grads[key] = values[key].nbytes
        temp = op.backward_temp + (op.weight_grad if grads_resident else 0)
        if not grads_resident:
            parameter_grads += op.weight_grad
        now = total() + sum(grads.values()) + temp
        activations = max(activations, now)
        if now + parameter_grads > peak:
            peak, peak_grads = now + parameter_grads, parameter_grads
        for key in op.makes:
            grads.pop(key, None)
        for key in set(op.saved):
            keep[key] -= 1
            if keep[key] == 0:
                live.pop(key, None)
        if op.layer in checkpointed and index == first_op[op.layer]:
            key = layer_input[op.layer]
            keep[key] -= 1
            if keep[key] == 0:
                live.pop(key, None)
    return saved, peak, peak_grads, activations, parameter_grads
