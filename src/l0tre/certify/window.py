"""Spatial windows: compute only where a batch of boxes can differ from a reference point.

When every box of a batch agrees with a reference input ``x_ref`` outside a small spatial
rectangle (an L0 box frees only a few pixels), every spatial node (convolution, ReLU,
max-pool, per-channel affine, residual addition) also equals the reference activation outside
a rectangle that grows with the receptive field. A :class:`Plan` records, per node, that
window (or ``None``: computed densely), the operation cropped to it, and the crop of each
input it reads. Values outside a window are the reference activations, *exactly*, for every
input of every box; the backward pass substitutes them directly.

Crops use ``(B, *lead, C, h, w)`` tensors; rectangles are half-open ``(h0, h1, w0, w1)`` in the
node's own map coordinates and may extend past the map for a crop (padding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from l0tre.certify import ops as O
from l0tre.certify.graph import Graph

__all__ = ["Plan", "Rect", "crop", "make_plan", "uncrop"]

_DENSE_FRACTION = 0.5


@dataclass(frozen=True)
class Rect:
    """A half-open rectangle ``[h0, h1) × [w0, w1)``."""

    h0: int
    h1: int
    w0: int
    w1: int

    @property
    def h(self) -> int:
        return self.h1 - self.h0

    @property
    def w(self) -> int:
        return self.w1 - self.w0


@dataclass(frozen=True)
class Plan:
    """Per-node execution plan for one batch of boxes.

    Attributes:
        geom: the node's window, or ``None`` when it is held densely.
        ops: the operation to apply (cropped for windowed nodes).
        crops: per input, the rectangle of that input to read (``None``: as stored).
        pads: per input, the value outside the map (0, or ``-inf`` for max-pooling).
        ref: reference activations ``(C, H, W)`` of the windowed nodes.
        shift: ``None`` (every box shares the windows) or per-box offsets ``(B, 2)`` (rows,
            columns; see :mod:`l0tre.certify.perbox`): box ``b`` holds node ``j`` in
            ``geom[j]`` moved by ``shift[b]``, and a windowed node reads its inputs at its
            ``crops`` moved likewise.
    """

    geom: tuple[Rect | None, ...]
    ops: tuple[O.Op | None, ...]
    crops: tuple[tuple[Rect | None, ...], ...]
    pads: tuple[tuple[float, ...], ...]
    ref: dict[int, Tensor]
    shift: Tensor | None = None

    def rows(self, idx: Tensor) -> Plan:
        """The plan for the boxes ``idx`` ``(b,)`` of its batch."""
        if self.shift is None:
            return self
        return replace(self, shift=self.shift[idx])

    def shape(self, graph: Graph, i: int) -> O.Shape:
        """The per-sample shape node ``i`` is held in."""
        g = self.geom[i]
        if g is None:
            return graph.nodes[i].shape
        return (graph.nodes[i].shape[0], g.h, g.w)


def dense_plan(graph: Graph) -> Plan:
    n = len(graph.nodes)
    return Plan((None,) * n, tuple(node.op for node in graph.nodes),
                tuple(tuple(None for _ in node.inputs) for node in graph.nodes),
                tuple(tuple(0.0 for _ in node.inputs) for node in graph.nodes), {})


def crop(x: Tensor, geom: Rect | None, ref: Tensor | None, full: tuple[int, int], box: Rect,
         pad: float) -> Tensor:
    """Read ``box`` of a node held as ``x`` ``(B, *lead, C, h, w)`` in ``geom`` (``None``: the
    full ``full = (H, W)`` map); outside the window the value is ``ref`` ``(C, H, W)`` (zero
    when ``None``), outside the map ``pad``."""
    hh, ww = full
    if geom is None and box == Rect(0, hh, 0, ww):
        return x
    out = x.new_full((*x.shape[:-2], box.h, box.w), pad)
    ih0, ih1, iw0, iw1 = max(box.h0, 0), min(box.h1, hh), max(box.w0, 0), min(box.w1, ww)
    if ih0 >= ih1 or iw0 >= iw1:
        return out
    dst = out[..., ih0 - box.h0:ih1 - box.h0, iw0 - box.w0:iw1 - box.w0]
    if geom is None:
        dst.copy_(x[..., ih0:ih1, iw0:iw1])
        return out
    if ref is None:
        dst.zero_()
    else:
        dst.copy_(ref[:, ih0:ih1, iw0:iw1].expand_as(dst))
    jh0, jh1, jw0, jw1 = max(ih0, geom.h0), min(ih1, geom.h1), max(iw0, geom.w0), min(iw1, geom.w1)
    if jh0 < jh1 and jw0 < jw1:
        out[..., jh0 - box.h0:jh1 - box.h0, jw0 - box.w0:jw1 - box.w0] = \
            x[..., jh0 - geom.h0:jh1 - geom.h0, jw0 - geom.w0:jw1 - geom.w0]
    return out


def uncrop(a: Tensor, box: Rect, geom: Rect | None, ref: Tensor | None, full: tuple[int, int]
           ) -> tuple[Tensor, Tensor | None]:
    """Backward of :func:`crop` for coefficients ``a`` ``(B, M, C, box.h, box.w)``.

    Returns the coefficients on the node as held (window or full map) and the ``(B, M)``
    contribution of the positions outside the window, whose values are fixed at ``ref``
    (``None`` when there is none). Positions outside the map are dropped (padding)."""
    hh, ww = full
    if geom is None and box == Rect(0, hh, 0, ww):
        return a, None
    b, m, c = a.shape[:3]
    ih0, ih1, iw0, iw1 = max(box.h0, 0), min(box.h1, hh), max(box.w0, 0), min(box.w1, ww)
    tgt = geom if geom is not None else Rect(0, hh, 0, ww)
    out = a.new_zeros((b, m, c, tgt.h, tgt.w))
    if ih0 >= ih1 or iw0 >= iw1:
        return out, None
    inside = a[..., ih0 - box.h0:ih1 - box.h0, iw0 - box.w0:iw1 - box.w0]
    jh0, jh1, jw0, jw1 = max(ih0, tgt.h0), min(ih1, tgt.h1), max(iw0, tgt.w0), min(iw1, tgt.w1)
    if jh0 < jh1 and jw0 < jw1:
        out[..., jh0 - tgt.h0:jh1 - tgt.h0, jw0 - tgt.w0:jw1 - tgt.w0] = \
            a[..., jh0 - box.h0:jh1 - box.h0, jw0 - box.w0:jw1 - box.w0]
    if geom is None or ref is None:
        return out, None
    total = (inside * ref[:, ih0:ih1, iw0:iw1]).flatten(2).sum(2)
    if jh0 < jh1 and jw0 < jw1:
        win = a[..., jh0 - box.h0:jh1 - box.h0, jw0 - box.w0:jw1 - box.w0]
        total = total - (win * ref[:, jh0:jh1, jw0:jw1]).flatten(2).sum(2)
    return out, total


def _spatial_const(t: Tensor | None) -> bool:
    return t is None or t.numel() == 1 or (t.dim() == 3 and t.shape[1] == 1 and t.shape[2] == 1)


def _windowable(op: O.Op) -> bool:
    if isinstance(op, (O.ConvOp, O.ReluOp, O.MaxPoolOp, O.AddOp)):
        return len(op.out_shape) == 3
    if isinstance(op, O.ScaleShiftOp):
        return len(op.out_shape) == 3 and _spatial_const(op.scale) and _spatial_const(op.bias)
    return False


def _span(a0: int, a1: int, k: int, s: int, p: int, d: int, n_out: int) -> tuple[int, int]:
    """Outputs ``[o0, o1)`` whose receptive field meets inputs ``[a0, a1)``."""
    o0 = max(0, math.ceil((a0 + p - d * (k - 1)) / s))
    o1 = min(n_out - 1, (a1 - 1 + p) // s)
    o0 = min(o0, n_out - 1)
    return o0, max(o1, o0) + 1


def _sliding(op: O.ConvOp | O.MaxPoolOp, win: Rect) -> tuple[Rect, Rect]:
    """Output window of a convolution / pooling and the input rectangle it reads."""
    if isinstance(op, O.ConvOp):
        k = (int(op.weight.shape[-2]), int(op.weight.shape[-1]))
    else:
        k = op.kernel
    s, p, d = op.stride, op.padding, op.dilation
    _, ho, wo = op.out_shape
    h0, h1 = _span(win.h0, win.h1, k[0], s[0], p[0], d[0], ho)
    w0, w1 = _span(win.w0, win.w1, k[1], s[1], p[1], d[1], wo)
    read = Rect(h0 * s[0] - p[0], (h1 - 1) * s[0] - p[0] + d[0] * (k[0] - 1) + 1,
                w0 * s[1] - p[1], (w1 - 1) * s[1] - p[1] + d[1] * (k[1] - 1) + 1)
    return Rect(h0, h1, w0, w1), read


def _cropped(op: O.Op, in_shapes: Sequence[O.Shape], out_shape: O.Shape) -> O.Op:
    if isinstance(op, O.ConvOp):
        return op.cropped(in_shapes[0], out_shape)
    if isinstance(op, O.MaxPoolOp):
        return O.MaxPoolOp(op.kernel, op.stride, (0, 0), op.dilation, False, in_shapes[0],
                           out_shape, op.index_map.device)
    if isinstance(op, O.ReluOp):
        return O.ReluOp(out_shape)
    if isinstance(op, O.AddOp):
        return O.AddOp(op.coeffs, out_shape)
    if isinstance(op, O.ScaleShiftOp):
        return O.ScaleShiftOp(op.scale, op.bias, out_shape)
    raise TypeError(f"cannot crop {op.describe()}")


def input_window(lo: Tensor, hi: Tensor, x_ref: Tensor) -> Rect:
    """The smallest rectangle outside which every box equals ``x_ref`` ``(C, H, W)``."""
    diff = ((lo != x_ref) | (hi != x_ref)).any(0).any(0)  # (H, W)
    rows = torch.nonzero(diff.any(1)).flatten()
    cols = torch.nonzero(diff.any(0)).flatten()
    if len(rows) == 0:
        return Rect(0, 1, 0, 1)
    return Rect(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def _node_window(op: O.Op, in_geoms: list[Rect | None], shape: O.Shape) -> tuple[Rect | None, list[Rect | None]]:
    """The window of a node whose inputs are held in ``in_geoms`` and the rectangles it reads
    of them; ``None`` when it is held densely (not windowable, or the window would be large)."""
    if not _windowable(op) or any(g is None for g in in_geoms):
        return None, []
    gs = [g for g in in_geoms if g is not None]
    reads: list[Rect | None]
    if isinstance(op, (O.ConvOp, O.MaxPoolOp)):
        out_win, read = _sliding(op, gs[0])
        reads = [read]
    elif isinstance(op, O.AddOp):
        out_win = Rect(min(g.h0 for g in gs), max(g.h1 for g in gs), min(g.w0 for g in gs), max(g.w1 for g in gs))
        reads = [None if g == out_win else out_win for g in gs]
    else:
        out_win, reads = gs[0], [None]
    _, hh, ww = shape
    if out_win.h * out_win.w > _DENSE_FRACTION * hh * ww:
        return None, reads
    return out_win, reads


def make_plan(graph: Graph, lo: Tensor, hi: Tensor) -> Plan:
    """The plan for the boxes ``[lo, hi]`` ``(B, *input_shape)`` (dense when windows do not
    pay off)."""
    shape = graph.input_shape
    if len(shape) != 3:
        return dense_plan(graph)
    x_ref = lo[0]
    win0 = input_window(lo, hi, x_ref)
    if win0.h * win0.w > _DENSE_FRACTION * shape[1] * shape[2]:
        return dense_plan(graph)
    geom: list[Rect | None] = [win0]
    ops: list[O.Op | None] = [None]
    crops: list[tuple[Rect | None, ...]] = [()]
    pads: list[tuple[float, ...]] = [()]
    for node in graph.nodes[1:]:
        op = node.op
        assert op is not None
        in_geoms = [geom[j] for j in node.inputs]
        out_win, reads = _node_window(op, in_geoms, node.shape)
        if out_win is None:
            reads = [None if g is None else Rect(0, graph.nodes[j].shape[1], 0,
                                                 graph.nodes[j].shape[2])
                     for g, j in zip(in_geoms, node.inputs, strict=True)]
            geom.append(None)
            ops.append(op)
        else:
            c = node.shape[0]
            in_shapes: list[O.Shape] = []
            for r, g, j in zip(reads, in_geoms, node.inputs, strict=True):
                rect = r if r is not None else g
                assert rect is not None
                in_shapes.append((graph.nodes[j].shape[0], rect.h, rect.w))
            geom.append(out_win)
            ops.append(_cropped(op, in_shapes, (c, out_win.h, out_win.w)))
        crops.append(tuple(reads))
        pad = -math.inf if isinstance(op, O.MaxPoolOp) else 0.0
        pads.append(tuple(pad for _ in node.inputs))
    windowed = [i for i, g in enumerate(geom) if g is not None]
    ref: dict[int, Tensor] = {}
    if windowed:
        acts = graph.activations(x_ref.unsqueeze(0), keep=set(windowed))
        ref = {i: acts[i][0] for i in windowed}
    return Plan(tuple(geom), tuple(ops), tuple(crops), tuple(pads), ref)
