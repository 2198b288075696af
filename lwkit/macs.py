"""Multiply-accumulates (MACs) of one forward pass, counted at the ATen level.

One MAC = one multiply and one add; FLOPs ~ 2 x MACs. Every matmul-like ATen op that runs is counted with
its formula (one small pure function per op family, below). Element-wise ops, norms, pooling, softmax and
data movement count 0 (they are memory-bound, not MAC-bound). An op that may multiply-accumulate but has no
formula here raises instead of silently counting 0.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["MAC_RULES", "MacCounter", "count_macs"]

aten = torch.ops.aten


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _rows(x: torch.Tensor) -> int:
    """Vectors along the last dimension: tokens of a (batch, seq, features) tensor, or the batch of (b, f)."""
    return _numel(x.shape[:-1])


def _lengths(x: torch.Tensor) -> list[int]:
    """Sequence length of each item of a (batch, seq, embed) or (seq, embed) tensor, or of a nested tensor."""
    if x.is_nested:
        return [int(t.shape[0]) for t in x.unbind()]
    return [int(x.shape[-2])] * _numel(x.shape[:-2])


# ---------------------------------------------------------------------------------------------------------
# Formulas. Each takes the op's positional arguments (keywords and defaults filled in) and its first output.

def _mm_macs(a, out) -> int:  # (m, k) @ (k, n) -> m*k*n; bmm: (b, m, k) @ (b, k, n)
    return a[0].numel() * a[1].shape[-1]


def _matmul_macs(a, out) -> int:  # any broadcast matmul: each output element is a k-long dot product
    return out.numel() * a[0].shape[-1]


def _addmm_macs(a, out) -> int:  # bias + (m, k) @ (k, n); also baddbmm / addbmm on (b, m, k) @ (b, k, n)
    return a[1].numel() * a[2].shape[-1]


def _mv_macs(a, out) -> int:  # (m, k) @ (k,) -> m*k; dot / vdot: (k,) . (k,) -> k
    return a[0].numel()


def _addmv_macs(a, out) -> int:  # bias + (m, k) @ (k,)
    return a[1].numel()


def _addr_macs(a, out) -> int:  # M + outer(u (m,), v (n,)) -> m*n
    return a[1].numel() * a[2].numel()


def _linear_macs(a, out) -> int:  # x (..., in) @ W (out, in)^T
    return a[0].numel() * a[1].shape[0]


def _int8_weight_mm_macs(a, out) -> int:  # x (m, k) @ W (n, k)^T with int8 W
    return a[0].numel() * a[1].shape[0]


def _conv_macs(a, out, transposed: bool | None = None) -> int:
    # Each output element (transposed: each input element) needs (in_channels / groups) * kh * kw MACs.
    # weight: (out, in/groups, kh, kw); transposed: (in, out/groups, kh, kw). Works for 1-d, 2-d and 3-d.
    x, weight = a[0], a[1]
    if transposed is None:
        transposed = bool(a[6])  # convolution(input, weight, bias, stride, padding, dilation, transposed, ...)
    return (x.numel() if transposed else out.numel()) * _numel(weight.shape[1:])


def _conv_forward_macs(a, out) -> int:
    return _conv_macs(a, out, transposed=False)


def _conv_transpose_macs(a, out) -> int:
    return _conv_macs(a, out, transposed=True)


def _conv_tbc_macs(a, out) -> int:  # input (time, batch, in), weight (k, in, out) -> out (time', batch, out)
    return out.numel() * _numel(a[1].shape[:2])


def _sdpa_macs(a, out) -> int:
    # softmax(q k^T) v with q (b, h, s, d), k (b, h, t, d), v (b, h, t, d_v): b*h*s*t*d for the scores and
    # b*h*s*t*d_v for the mix. Causal masks are counted in full, as torch's flop counter does.
    q, k, v = a[0], a[1], a[2]
    return _rows(q) * k.shape[-2] * (q.shape[-1] + v.shape[-1])


def _attention_forward_macs(a, out) -> int:
    # The kernels under SDPA take (batch, seq, heads, dim), or (tokens, heads, dim) with cumulative
    # sequence lengths for variable-length batches.
    q, k, v, cum_q, cum_k = a[0], a[1], a[2], a[3], a[4]
    heads, d, d_v = q.shape[-2], q.shape[-1], v.shape[-1]
    if cum_q is not None and cum_k is not None:
        pairs = int((cum_q.diff() * cum_k.diff()).sum())  # sum over sequences of s_i * t_i
    else:
        pairs = _numel(q.shape[:-3]) * q.shape[-3] * k.shape[-3]
    return pairs * heads * (d + d_v)


def _self_attention_macs(query, key, value, embed_dim: int) -> int:
    # in-projection of q, k, v (e x e each), q k^T and attn v (s*t*e each), out-projection (e x e)
    ls_q, ls_k, ls_v = _lengths(query), _lengths(key), _lengths(value)
    in_proj = embed_dim * embed_dim * (sum(ls_q) + sum(ls_k) + sum(ls_v))
    scores_and_mix = 2 * embed_dim * sum(s * t for s, t in zip(ls_q, ls_k, strict=True))
    return in_proj + scores_and_mix + embed_dim * embed_dim * sum(ls_q)


def _native_mha_macs(a, out) -> int:
    # _native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, ...): the fused fast
    # path of nn.MultiheadAttention in eval mode under no_grad.
    return _self_attention_macs(a[0], a[1], a[2], int(a[3]))


def _encoder_layer_macs(a, out) -> int:
    # _transformer_encoder_layer_fwd(src, embed_dim, num_heads, ..., ffn_weight_1 (f, e) at 14, ...): the
    # fused fast path of nn.TransformerEncoderLayer. Attention plus the two feed-forward layers (e*f each).
    src, embed_dim, ffn_1 = a[0], int(a[1]), a[14]
    return _self_attention_macs(src, src, src, embed_dim) + 2 * sum(_lengths(src)) * ffn_1.numel()


def _rnn_macs(a, out) -> int:
    # lstm / gru / rnn_tanh / rnn_relu / _cudnn_rnn / miopen_rnn: every layer and direction applies W_ih
    # and W_hh (and LSTM's projection W_hr) to every token, e.g. LSTM: 4*h*(i + h) per token and direction.
    # The weights are the 2-d tensors of the flat params list; biases (1-d) are additions, not MACs.
    tokens = _rows(a[0])  # (seq, batch, in), (batch, seq, in) or packed (tokens, in)
    params = next(arg for arg in a if isinstance(arg, list | tuple)
                  and any(isinstance(t, torch.Tensor) and t.dim() == 2 for t in arg))
    return tokens * sum(p.numel() for p in params if isinstance(p, torch.Tensor) and p.dim() == 2)


def _mkldnn_rnn_layer_macs(a, out) -> int:  # one layer, one direction: (input, w_ih, w_hh, b_ih, b_hh, ...)
    return _rows(a[0]) * (a[1].numel() + a[2].numel())


def _rnn_cell_macs(a, out) -> int:  # lstm_cell / gru_cell / rnn_*_cell(input (b, i), hx, w_ih, w_hh, ...)
    return _rows(a[0]) * (a[2].numel() + a[3].numel())


def _trilinear_macs(a, out) -> int:
    # _trilinear(i1, i2, i3, expand1, expand2, expand3, sumdim, ...), e.g. F.bilinear: one MAC per point
    # of the broadcast product of the three inputs (b * out * in1 * in2 for a bilinear layer).
    dims = a[0].dim() + len(a[3])
    shapes = []
    for t, expand in zip(a[:3], a[3:6], strict=True):
        sizes = iter(t.shape)  # t with a size-1 axis inserted at each of its `expand` dims
        shapes.append([1 if d in expand else next(sizes) for d in range(dims)])
    return _numel(torch.broadcast_shapes(*shapes))


def _cdist_macs(a, out) -> int:  # x1 (..., p, m), x2 (..., r, m) -> (..., p, r): m MACs per distance (pdist too)
    return out.numel() * a[0].shape[-1]


_CONV_OPS = ("convolution", "_convolution", "convolution_overrideable", "mkldnn_convolution",
             "cudnn_convolution", "miopen_convolution", "miopen_depthwise_convolution", "_slow_conv2d_forward",
             "slow_conv3d_forward", "slow_conv_dilated2d", "slow_conv_dilated3d", "_conv_depthwise2d",
             "conv_depthwise3d", "_nnpack_spatial_convolution")
_CONV_TRANSPOSE_OPS = ("slow_conv_transpose2d", "slow_conv_transpose3d", "cudnn_convolution_transpose",
                       "miopen_convolution_transpose")
_SDPA_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_fused_attention_overrideable", "_scaled_dot_product_attention_math",
             "_scaled_dot_product_attention_math_for_mps", "_scaled_dot_product_flash_attention_for_mps")


def _rules() -> dict:
    named = {
        "mm": _mm_macs, "bmm": _mm_macs, "_int_mm": _mm_macs, "_scaled_mm": _mm_macs, "matmul": _matmul_macs,
        "addmm": _addmm_macs, "_addmm_activation": _addmm_macs, "baddbmm": _addmm_macs, "addbmm": _addmm_macs,
        "mv": _mv_macs, "dot": _mv_macs, "vdot": _mv_macs, "addmv": _addmv_macs, "addr": _addr_macs,
        "linear": _linear_macs, "mkldnn_linear": _linear_macs, "_weight_int8pack_mm": _int8_weight_mm_macs,
        "conv_tbc": _conv_tbc_macs, "_trilinear": _trilinear_macs, "_cdist_forward": _cdist_macs,
        "_pdist_forward": _cdist_macs,
        "_flash_attention_forward": _attention_forward_macs,
        "_efficient_attention_forward": _attention_forward_macs,
        "_native_multi_head_attention": _native_mha_macs,
        "_transformer_encoder_layer_fwd": _encoder_layer_macs,
        "lstm": _rnn_macs, "gru": _rnn_macs, "rnn_tanh": _rnn_macs, "rnn_relu": _rnn_macs,
        "_cudnn_rnn": _rnn_macs, "miopen_rnn": _rnn_macs, "mkldnn_rnn_layer": _mkldnn_rnn_layer_macs,
        "lstm_cell": _rnn_cell_macs, "gru_cell": _rnn_cell_macs, "rnn_tanh_cell": _rnn_cell_macs,
        "rnn_relu_cell": _rnn_cell_macs,
    }
    named |= dict.fromkeys(_SDPA_OPS, _sdpa_macs)
    named |= dict.fromkeys(_CONV_OPS[3:], _conv_forward_macs)
    named |= dict.fromkeys(_CONV_TRANSPOSE_OPS, _conv_transpose_macs)
    named |= dict.fromkeys(_CONV_OPS[:3], _conv_macs)  # these three carry a `transposed` argument
    named |= {name + "_": rule for name, rule in named.items()}  # in-place variants: x.addmm_(a, b)
    return {getattr(aten, name): rule for name, rule in named.items() if hasattr(aten, name)}


MAC_RULES = _rules()  # ATen op (overload packet) -> formula(args, output) -> MACs

# Ops with no multiply-accumulates that take several floating tensors (element-wise ops, views and norms
# need no entry: ATen tags the first `pointwise`, views are recognised, norms take one activation tensor).
_ZERO_MAC_OPS = frozenset({
    "cat", "stack", "copy", "copy_", "_to_copy", "clone", "index", "index_put", "index_put_",
    "_index_put_impl_", "index_copy", "index_add", "scatter", "scatter_add", "scatter_reduce", "gather",
    "masked_scatter", "masked_fill", "where", "slice_scatter", "select_scatter", "diagonal_scatter",
    "as_strided_scatter", "equal", "set_", "lerp", "grid_sampler_2d", "grid_sampler_3d",
    "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "kl_div", "nll_loss_forward", "nll_loss2d_forward", "_euclidean_dist",
    "embedding", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only",
    "upsample_bilinear2d", "upsample_linear1d", "upsample_trilinear3d", "upsample_bicubic2d",
    "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa",
    # the fused CUDA RNN cells get gates already computed by a counted mm: what is left is element-wise
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell",
    "linalg_vector_norm", "_linalg_check_errors", "linalg_cross", "dist", "complex", "polar", "isin",
    "searchsorted", "put", "index_reduce", "index_fill", "masked_select",
})

# Names that say "this multiplies matrices" (matched against the `_`-separated words of the op name).
_MATMUL_WORDS = frozenset({"mm", "bmm", "addmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot", "matmul",
                           "einsum", "tensordot", "gemm", "linear", "bilinear", "trilinear", "attention",
                           "mha", "lstm", "gru", "rnn", "transformer", "cdist", "pdist"})
_CONV_WORD = re.compile(r"conv(olution)?(\dd)?|conv_?transpose\dd")


def _looks_like_matmul(func, args) -> bool:
    name = func.overloadpacket.__name__
    base = name[:-1] if name.endswith("_") and not name.startswith("_") else name  # in-place: scatter_ -> scatter
    if base in _ZERO_MAC_OPS or name in _ZERO_MAC_OPS or func.is_view or torch.Tag.pointwise in func.tags:
        return False
    tensors = [t for t in tree_leaves(args) if isinstance(t, torch.Tensor)]
    if not any(t.is_floating_point() or t.is_complex() or t.is_quantized for t in tensors):
        return False  # index arithmetic
    words = set(name.lower().split("_"))
    if words & _MATMUL_WORDS or any(_CONV_WORD.fullmatch(w) for w in words):
        return True
    # an op we have never heard of that combines two floating matrices may well be a contraction
    return sum(1 for t in tensors if (t.is_floating_point() or t.is_complex()) and t.dim() >= 2) >= 2


def _positional(func, args, kwargs) -> list:
    """The op's arguments in schema order, with keywords and defaults filled in."""
    full = list(args)
    for arg in func._schema.arguments[len(args):]:
        if arg.name in kwargs:
            full.append(kwargs[arg.name])
        else:
            full.append(arg.default_value if arg.has_default_value() else None)
    return full


class MacCounter(TorchDispatchMode):
    """Counts the MACs of every matmul-like ATen op that runs inside it, whatever module issued it.

    `macs` is the total, `by_op` the MACs per op name, `uncounted` the calls per op that may do MACs but
    has no formula in MAC_RULES (count_macs raises on those rather than count them as 0).
    """

    def __init__(self):
        super().__init__()
        self.macs = 0
        self.by_op: Counter = Counter()
        self.uncounted: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = MAC_RULES.get(func.overloadpacket)
        if rule is not None:
            first = out if isinstance(out, torch.Tensor) else out[0]
            n = int(rule(_positional(func, args, kwargs), first))
            self.macs += n
            self.by_op[str(func.overloadpacket)] += n
        elif _looks_like_matmul(func, (args, kwargs)):
            self.uncounted[str(func)] += 1
        return out


def _call(model, example_input):
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


def _input_values(example_input) -> list:
    if isinstance(example_input, Mapping):
        return list(example_input.values())
    return list(example_input) if isinstance(example_input, tuple) else [example_input]


def _check_example_input(example_input) -> None:
    """A tensor, a non-empty tuple of tensors, or a mapping name -> tensor (e.g. a tokenizer's output)."""
    values = _input_values(example_input)
    if not values or not all(isinstance(x, torch.Tensor) for x in values):
        raise TypeError("example_input must be a tensor, a non-empty tuple of tensors or a dict of name -> "
                        f"tensor, got {type(example_input).__name__}"
                        + (f" holding {[type(x).__name__ for x in values]}" if values else " (empty)"))


def count_macs(model: nn.Module, example_input, *, unknown: str = "raise") -> int:
    """Multiply-accumulates of one forward pass on `example_input` (a tensor, a tuple of inputs, or a dict
    of keyword inputs such as a tokenizer's output).

    Counts at the ATen level, so functional calls inside `forward` count as well: conv (1/2/3-d, groups,
    transposed), linear/mm/bmm/mv/dot/addmv/addbmm/baddbmm/addr (and einsum/matmul, which decompose into
    them), scaled-dot-product attention in all its kernels, the fused nn.MultiheadAttention and
    nn.TransformerEncoderLayer fast paths (disabled while counting, and formulas for them too) and
    recurrent layers (LSTM per token and direction: 4*h*(i + h)). Element-wise ops, norms and pooling count 0.

    Works on the meta device too (shapes only), so large models can be counted without their weights.

    unknown: what to do when an op that may multiply-accumulate has no formula (e.g. int8 kernels, a custom
        op): "raise" (default) raises NotImplementedError naming it; "warn" warns and counts it as 0. An op
        "may multiply-accumulate" when its name says so (mm, matmul, dot, conv, linear, attention, lstm, ...)
        or when it takes two floating tensors of rank >= 2 and is not element-wise, a view or known data
        movement (cat, copy, index, scatter, ...).
    A model with parameters that counts 0 MACs warns (right for an embedding lookup, suspicious otherwise).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_example_input(example_input)
    if unknown not in ("raise", "warn"):
        raise ValueError(f"unknown must be 'raise' or 'warn', got {unknown!r}")
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    counter = MacCounter()
    try:
        model.eval()
        # eval + no_grad sends nn.MultiheadAttention / TransformerEncoderLayer to fused kernels; the
        # decomposed path does the same math and each of its matmuls is visible.
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), counter:
            _call(model, example_input)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    if counter.uncounted:
        ops = ", ".join(f"{op} ({n} call{'s' * (n > 1)})" for op, n in counter.uncounted.items())
        message = (f"count_macs has no MAC formula for {ops} in {type(model).__name__}; counting it as 0 "
                   "would understate the MACs. Pass the count yourself (compare(..., macs={name: n})), add a "
                   "formula to lwkit.macs.MAC_RULES, or call count_macs(..., unknown='warn') for a lower bound")
        if unknown == "raise":
            raise NotImplementedError(message)
        warnings.warn(message, stacklevel=2)
    if counter.macs == 0 and any(p.numel() for p in model.parameters()):
        warnings.warn(f"count_macs counted 0 MACs for {type(model).__name__}, which has parameters: its forward "
                      "ran no matmul or convolution (fine for an embedding or a norm, suspicious otherwise)",
                      stacklevel=2)
    return counter.macs
