"""Per-box spatial windows for stride-1 convolutional bodies.

:func:`~l0tre.certify.window.make_plan` gives a whole batch one window per node: the
smallest rectangle covering the free pixels of *every* box. For L0 boxes scattered over the
image (the connected triples of ``t = 3``) that rectangle is far larger than any one box
needs. Here every box gets its own window of a common size: the batch shares a *base*
geometry, and box ``b`` holds node ``j`` in ``geom[j]`` moved by ``shift[b]``.

Moving all windows by the same offset keeps their relative placement only when every
windowed operation commutes with translation: stride-1 convolutions (any padding or
dilation), per-channel affine maps, ReLU and residual additions (:func:`eligible`). The
windows are *not* clipped to the maps: positions of a window outside its map are computed but
never read (a consumer reads ``pad`` there, and the backward pass drops their coefficients),
so the result equals the common-window and the dense computation.

A windowed node reads a windowed input at its crop moved by the box's offset (``rel``); a
dense node (the flat head) reads a windowed input at an absolute rectangle, from the
reference activation with the box's window pasted in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from l0tre.certify import ops as O
from l0tre.certify import window as W
from l0tre.certify.graph import Graph
from l0tre.certify.window import Plan, Rect, _cropped, _windowable, crop, uncrop

__all__ = ["crop_input", "crop_shifted", "eligible", "make_perbox_plan", "uncrop_shifted"]


def eligible(graph: Graph) -> bool:
    """Whether every windowable node of ``graph`` commutes with translation (no max-pool, no
    strided convolution) and the input is an image."""
    if len(graph.input_shape) != 3:
        return False
    for node in graph.nodes[1:]:
        op = node.op
        if op is None or not _windowable(op):
            continue
        if isinstance(op, O.MaxPoolOp):
            return False
        if isinstance(op, O.ConvOp) and tuple(op.stride) != (1, 1):
            return False
    return True


def _reference(lo: Tensor, hi: Tensor) -> Tensor:
    """A ``(C, H, W)`` point that each coordinate takes in some box where it is fixed (box 0's
    lower corner where it is free in every box)."""
    fixed = (lo == hi).to(torch.int8)
    first = fixed.argmax(0, keepdim=True)  # the first box fixing the coordinate (0 if none)
    return lo.gather(0, first)[0]


def _extent(mask: Tensor) -> tuple[Tensor, Tensor]:
    """First index and length ``(B,)`` of the ``True`` run hull per row of ``mask`` ``(B, n)``
    (start 0, length 1 for an all-``False`` row)."""
    n = mask.shape[1]
    has = mask.any(1)
    m = mask.to(torch.int8)
    first = m.argmax(1)
    last = n - 1 - m.flip(1).argmax(1)
    first = torch.where(has, first, torch.zeros_like(first))
    length = torch.where(has, last - first + 1, torch.ones_like(first))
    return first, length


def _sliding(op: O.ConvOp, win: Rect) -> tuple[Rect, Rect]:
    """Output window of a stride-1 convolution over the input window ``win`` (unclipped:
    every output whose receptive field meets ``win``) and the input rectangle it reads."""
    kh, kw = int(op.weight.shape[-2]), int(op.weight.shape[-1])
    (ph, pw), (dh, dw) = op.padding, op.dilation
    out = Rect(win.h0 + ph - dh * (kh - 1), win.h1 + ph, win.w0 + pw - dw * (kw - 1), win.w1 + pw)
    read = Rect(out.h0 - ph, out.h1 - ph + dh * (kh - 1), out.w0 - pw, out.w1 - pw + dw * (kw - 1))
    return out, read


def make_perbox_plan(graph: Graph, lo: Tensor, hi: Tensor) -> Plan | None:
    """The per-box plan for the boxes ``[lo, hi]`` ``(B, C, H, W)``, or ``None`` when the graph
    is not :func:`eligible` or the common window size is too large to pay off."""
    if not eligible(graph) or lo.shape[0] == 0:
        return None
    _, hh, ww = graph.input_shape
    x_ref = _reference(lo, hi)
    diff = ((lo != x_ref) | (hi != x_ref)).any(1)  # (B, H, W)
    r0, eh = _extent(diff.any(2))
    c0, ew = _extent(diff.any(1))
    sh, sw = int(eh.max()), int(ew.max())
    if sh * sw > W._DENSE_FRACTION * hh * ww:
        return None
    # the window [t, t + s) stays inside the input map and covers [r0, r0 + eh)
    shift = torch.stack([torch.clamp(r0, max=hh - sh), torch.clamp(c0, max=ww - sw)], 1)
    geom: list[Rect | None] = [Rect(0, sh, 0, sw)]
    ops: list[O.Op | None] = [None]
    crops: list[tuple[Rect | None, ...]] = [()]
    pads: list[tuple[float, ...]] = [()]
    for node in graph.nodes[1:]:
        op = node.op
        if op is None:
            raise ValueError("only the input node may lack an operation")
        in_geoms = [geom[j] for j in node.inputs]
        out_win: Rect | None = None
        reads: list[Rect | None] = []
        if _windowable(op) and all(g is not None for g in in_geoms):
            gs = [g for g in in_geoms if g is not None]
            if isinstance(op, O.ConvOp):
                out_win, read = _sliding(op, gs[0])
                reads = [read]
            elif isinstance(op, O.AddOp):
                out_win = Rect(min(g.h0 for g in gs), max(g.h1 for g in gs),
                               min(g.w0 for g in gs), max(g.w1 for g in gs))
                reads = [None if g == out_win else out_win for g in gs]
            else:
                out_win, reads = gs[0], [None]
            _, nh, nw = node.shape
            if out_win.h * out_win.w > W._DENSE_FRACTION * nh * nw:
                out_win = None
        if out_win is None:
            reads = [None if g is None else Rect(0, graph.nodes[j].shape[1], 0, graph.nodes[j].shape[2])
                     for g, j in zip(in_geoms, node.inputs, strict=True)]
            geom.append(None)
            ops.append(op)
        else:
            in_shapes: list[O.Shape] = []
            for r, g, j in zip(reads, in_geoms, node.inputs, strict=True):
                rect = r if r is not None else g
                if rect is None:
                    raise ValueError("a windowed node must read windowed inputs")
                in_shapes.append((graph.nodes[j].shape[0], rect.h, rect.w))
            geom.append(out_win)
            ops.append(_cropped(op, in_shapes, (node.shape[0], out_win.h, out_win.w)))
        crops.append(tuple(reads))
        pads.append(tuple(0.0 for _ in node.inputs))
    windowed = [i for i, g in enumerate(geom) if g is not None]
    acts = graph.activations(x_ref.unsqueeze(0), keep=set(windowed))
    ref = {i: acts[i][0] for i in windowed}
    return Plan(tuple(geom), tuple(ops), tuple(crops), tuple(pads), ref, shift)


def _grid(rect: Rect, shift: Tensor, full: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``(B, h)`` and columns ``(B, w)`` of ``rect`` moved by ``shift`` (clamped into the
    map) and the ``(B, h, w)`` mask of the positions inside the map."""
    hh, ww = full
    dev = shift.device
    rows = rect.h0 + torch.arange(rect.h, device=dev) + shift[:, :1]
    cols = rect.w0 + torch.arange(rect.w, device=dev) + shift[:, 1:]
    inside = (((rows >= 0) & (rows < hh)).unsqueeze(2) & ((cols >= 0) & (cols < ww)).unsqueeze(1))
    return rows.clamp(0, hh - 1), cols.clamp(0, ww - 1), inside


def _gather(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``x`` ``(C, H, W)`` → ``(B, C, h, w)`` at ``rows`` ``(B, h)``, ``cols`` ``(B, w)``."""
    return x[:, rows.unsqueeze(2), cols.unsqueeze(1)].transpose(0, 1)


def _ref_at(ref: Tensor | None, rect: Rect, shift: Tensor, full: tuple[int, int], pad: float,
            like: Tensor) -> Tensor:
    """``ref`` ``(C, H, W)`` (zeros when ``None``) at ``rect`` moved by ``shift``, ``pad``
    outside the map: ``(B, C, h, w)`` in ``like``'s type."""
    rows, cols, inside = _grid(rect, shift, full)
    if ref is None:
        vals = like.new_zeros((shift.shape[0], 1, rect.h, rect.w))
    else:
        vals = _gather(ref.to(like.dtype), rows, cols)
    return torch.where(inside.unsqueeze(1), vals, torch.full_like(vals, pad))


def _lead(t: Tensor, x: Tensor) -> Tensor:
    """``t`` ``(B, C', h, w)`` viewed with ``x``'s middle dims as ones: ``(B, 1.., C', h, w)``."""
    return t.view(t.shape[0], *([1] * (x.dim() - 4)), *t.shape[1:])


def _overlap(a: Rect, b: Rect) -> Rect | None:
    r = Rect(max(a.h0, b.h0), min(a.h1, b.h1), max(a.w0, b.w0), min(a.w1, b.w1))
    return r if r.h > 0 and r.w > 0 else None


def crop_input(x: Tensor, geom: Rect, shift: Tensor) -> Tensor:
    """The windows ``(B, C, h, w)`` of full inputs ``x`` ``(B, C, H, W)`` (inside the map)."""
    rows, cols, _ = _grid(geom, shift, (x.shape[2], x.shape[3]))
    b = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1, 1)
    ch = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return x[b, ch, rows.view(rows.shape[0], 1, -1, 1), cols.view(cols.shape[0], 1, 1, -1)]


def crop_shifted(x: Tensor, geom: Rect, ref: Tensor | None, full: tuple[int, int], box: Rect,
                 pad: float, shift: Tensor, rel: bool) -> Tensor:
    """Read ``box`` (moved by ``shift`` when ``rel``) of a node held as ``x``
    ``(B, *lead, C, h, w)`` in ``geom`` moved by ``shift``; outside the window the value is
    ``ref`` (zero when ``None``), outside the map ``pad``."""
    if not rel:
        return crop(_embed(x, geom, ref, full, shift), None, None, full, box, pad)
    base = _lead(_ref_at(ref, box, shift, full, pad, x), x)
    out = base.expand(*x.shape[:-2], box.h, box.w).clone()
    ov = _overlap(box, geom)
    if ov is not None:
        _, _, inside = _grid(ov, shift, full)
        src = x[..., ov.h0 - geom.h0:ov.h1 - geom.h0, ov.w0 - geom.w0:ov.w1 - geom.w0]
        m = _lead(inside.unsqueeze(1), x)
        out[..., ov.h0 - box.h0:ov.h1 - box.h0, ov.w0 - box.w0:ov.w1 - box.w0] = \
            torch.where(m, src, torch.full_like(src, pad))
    return out


def _flat_index(geom: Rect, shift: Tensor, full: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Flat map positions ``(B, h*w)`` of the moved window (clamped) and the in-map mask."""
    rows, cols, inside = _grid(geom, shift, full)
    idx = rows.unsqueeze(2) * full[1] + cols.unsqueeze(1)
    return idx.flatten(1), inside.flatten(1)


def _embed(x: Tensor, geom: Rect, ref: Tensor | None, full: tuple[int, int], shift: Tensor
           ) -> Tensor:
    """The full maps ``(B, *lead, C, H, W)``: ``ref`` (or zeros) with each box's window of
    ``x`` ``(B, *lead, C, h, w)`` pasted in (positions outside the map dropped)."""
    hh, ww = full
    idx, inside = _flat_index(geom, shift, full)
    idx = torch.where(inside, idx, torch.full_like(idx, hh * ww))  # a spare slot for the rest
    out = x.new_zeros((*x.shape[:-2], hh * ww + 1))
    if ref is not None:
        out[..., :hh * ww] = ref.to(x.dtype).flatten(1)
    index = idx.view(idx.shape[0], *([1] * (x.dim() - 3)), -1).expand(*x.shape[:-2], -1)
    out.scatter_(-1, index, x.flatten(-2))
    return out[..., :hh * ww].view(*x.shape[:-2], hh, ww)


def uncrop_shifted(a: Tensor, box: Rect, geom: Rect, ref: Tensor | None, full: tuple[int, int],
                   shift: Tensor, rel: bool) -> tuple[Tensor, Tensor | None]:
    """Backward of :func:`crop_shifted` for coefficients ``a`` ``(B, M, C, box.h, box.w)``:
    the coefficients ``(B, M, C, geom.h, geom.w)`` on the moved window and the ``(B, M)``
    contribution of the positions outside it (fixed at ``ref``; ``None`` without one).
    Positions outside the map are dropped."""
    b, m, c = a.shape[:3]
    if not rel:
        a_full, _ = uncrop(a, box, None, None, full)  # (B, M, C, H, W)
        flat = a_full.reshape(b, m, c, -1)
        idx, inside = _flat_index(geom, shift, full)
        mask = inside.to(a.dtype).view(b, 1, 1, -1)
        out = flat.gather(3, idx.view(b, 1, 1, -1).expand(b, m, c, -1)) * mask
        if ref is None:
            return out.view(b, m, c, geom.h, geom.w), None
        r = ref.to(a.dtype)
        if b > 1 and flat.stride(0) == 0:  # shared rows (see crown.backward)
            total = (flat[0].reshape(m, -1) @ r.flatten()).expand(b, m)
        else:
            total = flat.reshape(b, m, -1) @ r.flatten()
        r_win = r.flatten(1)[:, idx].transpose(0, 1)  # (B, C, h*w)
        total = total - torch.bmm(out.reshape(b, m, -1), r_win.reshape(b, -1, 1)).squeeze(2)
        return out.view(b, m, c, geom.h, geom.w), total
    out = a.new_zeros((b, m, c, geom.h, geom.w))
    ov = _overlap(box, geom)
    if ov is not None:
        _, _, inside = _grid(ov, shift, full)
        src = a[..., ov.h0 - box.h0:ov.h1 - box.h0, ov.w0 - box.w0:ov.w1 - box.w0]
        out[..., ov.h0 - geom.h0:ov.h1 - geom.h0, ov.w0 - geom.w0:ov.w1 - geom.w0] = \
            src * inside.unsqueeze(1).unsqueeze(1).to(a.dtype)
    if ref is None:
        return out, None
    r = _ref_at(ref, box, shift, full, 0.0, a)  # (B, C, bh, bw)
    if ov is not None:
        r[..., ov.h0 - box.h0:ov.h1 - box.h0, ov.w0 - box.w0:ov.w1 - box.w0] = 0.0
    total = torch.bmm(a.reshape(b, m, -1), r.reshape(b, -1, 1)).squeeze(2)
    return out, total
