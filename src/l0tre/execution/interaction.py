"""Pairs whose windows meet before the pair table's convolution, from their interaction only.

For two changed pixels ``p`` and ``q`` and a map ``A`` after the elementwise layers ``g`` of a
convolution (``Z`` its output, ``A = g(Z)``), call the *interaction*::

    J = A^pq − A^p − A^q + A        (^p: only p changed, ^q: only q, no mark: the base)

``J`` is zero outside the cells both pixels' windows cover (each other cell sees at most one
change). The next convolution ``K`` is linear, so its output with both changes is
``Z^pq = Z^p + Z^q − Z + K(J)`` where ``K(J)`` (no bias) reaches only the cells within the
kernel of the shared ones — for stride-1 convolutions exactly the cells both windows cover at
the next map. From the single-pixel tables of every convolution's output (built once per input,
like :class:`~.pairs.PairTable`'s), a pair then costs the convolutions of its interaction on
the shared cells (a box of ``(w − |Δr|) × (w − |Δc|)`` cells for windows of size ``w`` and
pixels ``Δr, Δc`` apart), layer by layer, instead of both full windows through every layer.

Rows are grouped by ``(|Δr|, |Δc|)``: every row of a group has the same box sizes, so each
layer is one batched transposed convolution (the scatter of ``J`` through ``K``). Used by
:meth:`.pairs.PairTable.chain_outputs` for chains of stride-1, ungrouped convolutions and
per-channel elementwise layers (BatchNorm in eval, ReLU, Dropout in eval, Identity). The same
function up to floating-point summation order; the engine re-checks decisions near the boundary
with the plain forward pass (as for the chain).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..classifier import padded_index
from .incremental import IncrementalCaches, IncrementalPrefix
from .sparse_head import _apply
from .windows import _pair, _Spatial

__all__ = ["Corrections", "Interaction", "Scratch", "Stage"]


@dataclass
class Scratch:
    """A buffer reused from call to call for large temporaries (a fresh allocation of tens of MB
    per call costs as much in page faults as the arithmetic that fills it)."""

    buffer: torch.Tensor | None = None

    def take(self, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """``(rows, cols)`` uninitialised, of ``like``'s dtype and device; valid until the next call."""
        need = rows * cols
        buf = self.buffer
        if buf is None or buf.numel() < need or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.buffer = torch.empty(max(need, 1), dtype=like.dtype, device=like.device)
        return buf[:need].view(rows, cols)


@dataclass
class Stage:
    """One convolution before ``L``: its single-pixel output windows and base map.

    Attributes:
        single: ``(Na·n·P1, wh·ww, C)`` the convolution's output window for every (input, pixel,
            colour), channels-last (absolute values, not changes).
        base: ``(Na, H·W + 1, C)`` the base output map, channels-last, scratch slot (0) last.
        r0, c0: ``(n,)`` window origin of each pixel at this output (may lie outside the map).
        win: ``(wh, ww)`` window size; size: ``(H, W)`` the map's.
        g: the elementwise layers after the convolution (before the next one).
        weight: ``(C, C_next, kh, kw)`` the next convolution's kernel for
            :func:`torch.nn.functional.conv_transpose2d` (transposed and flipped).
    """

    single: torch.Tensor
    base: torch.Tensor
    r0: torch.Tensor
    c0: torch.Tensor
    win: tuple[int, int]
    size: tuple[int, int]
    g: nn.Sequential
    weight: torch.Tensor


@dataclass
class Interaction:
    """The stages of the convolutions before ``L`` (:class:`Stage`), and ``L``'s window geometry.

    Attributes:
        out_r0, out_c0: ``(n,)`` window origins at ``L``'s output; out_win: its window size.
        n, p1: pixels per input and palette size (rows of the tables are ``(a·n + pixel)·P1 + colour``).
        width: the input image's width (a pixel index is ``row·width + col``).
    """

    stages: list[Stage]
    out_r0: torch.Tensor
    out_c0: torch.Tensor
    out_win: tuple[int, int]
    n: int
    p1: int
    width: int
    scratch: Scratch = field(default_factory=Scratch)

    @staticmethod
    @torch.no_grad()
    def build(chain: IncrementalPrefix, caches: IncrementalCaches, x0: torch.Tensor, palette: torch.Tensor,
              layer: int, out_origin: tuple[torch.Tensor, torch.Tensor], rows: int = 512) -> Interaction | None:
        """The stages for the inputs ``x0`` ``(Na, C, H, W)`` (``caches``: ``chain.base(x0)``) and
        colours ``palette`` ``(P1, C)``, for ``L`` = spatial layer ``layer`` of ``chain`` whose
        output windows start at ``out_origin``; ``None`` when a layer before ``L`` is not a
        stride-1 ungrouped convolution or a per-channel elementwise layer."""
        stops = _conv_stops(chain, layer)
        if stops is None:
            return None
        na, _, h, w = x0.shape
        n, p1 = h * w, palette.shape[0]
        dev = x0.device
        stages_z = _base_outputs(chain, x0, [s for s, _ in stops])
        singles = [torch.empty(na * n * p1, sp.win_out[0] * sp.win_out[1], z.shape[1], dtype=z.dtype, device=dev)
                   for (_, sp), z in zip(stops, stages_z, strict=True)]
        a_all = torch.arange(na, device=dev).repeat_interleave(n * p1)
        pix_all = torch.arange(n, device=dev).repeat_interleave(p1).repeat(na)
        col_all = torch.arange(p1, device=dev).repeat(na * n)
        for i in range(0, a_all.shape[0], rows):
            a, pix, col = a_all[i : i + rows], pix_all[i : i + rows], col_all[i : i + rows]
            wins = chain.pixel_windows(pix, palette[col])
            start = 0
            for k, (stop, _) in enumerate(stops):
                wins = chain.windows_through(caches, a, wins, stop, start=start)
                start = stop
                v = wins[0].values  # (B, C, wh, ww)
                singles[k][i : i + rows] = v.permute(0, 2, 3, 1).reshape(v.shape[0], -1, v.shape[1])
        stages = []
        nxt = [sp for _, sp in stops[1:]] + [chain.spatial[layer]]
        for k, ((_, sp), z) in enumerate(zip(stops, stages_z, strict=True)):
            r_pix, c_pix = _pixel_origins(chain, torch.arange(n, device=dev), w, sp)
            conv = nxt[k].module
            assert isinstance(conv, nn.Conv2d)  # checked by _conv_stops
            hz, wz = z.shape[2], z.shape[3]
            base = torch.zeros(na, hz * wz + 1, z.shape[1], dtype=z.dtype, device=dev)
            base[:, :-1] = z.permute(0, 2, 3, 1).reshape(na, hz * wz, -1)
            stages.append(Stage(
                single=singles[k], base=base, r0=r_pix, c0=c_pix, win=sp.win_out, size=(hz, wz),
                g=_between(chain, sp.module, conv), weight=conv.weight.detach().transpose(0, 1).flip(2, 3),
            ))
        return Interaction(stages=stages, out_r0=out_origin[0], out_c0=out_origin[1],
                           out_win=chain.spatial[layer].win_out, n=n, p1=p1, width=w)

    @torch.no_grad()
    def correction(self, a: torch.Tensor, pixel: torch.Tensor, colour: torch.Tensor) -> Corrections:
        """``K_L(J)`` on the shared box of ``L``'s output for rows of input ``a`` ``(B,)`` with
        pixels ``pixel`` ``(B, 2)`` at palette colours ``colour`` ``(B, 2)`` (see :class:`Corrections`)."""
        dev = a.device
        key = (a.unsqueeze(1) * self.n + pixel) * self.p1 + colour  # (B, 2)
        w_img = self.width
        dr = (pixel[:, 0] // w_img - pixel[:, 1] // w_img).abs()
        dc = (pixel[:, 0] % w_img - pixel[:, 1] % w_img).abs()
        cls = dr * (w_img + 1) + dc
        order = torch.argsort(cls)
        uniq, counts = torch.unique_consecutive(cls[order], return_counts=True)
        wh, ww = self.out_win
        apart = [(u // (w_img + 1), u % (w_img + 1)) for u in uniq.tolist()]
        cells = [(wh - r) * (ww - c) for r, c in apart]
        if min(wh - r for r, _ in apart) <= 0 or min(ww - c for _, c in apart) <= 0:
            raise ValueError("interaction: expected pairs whose windows meet before L")
        sizes = counts * torch.tensor(cells, dtype=counts.dtype, device=dev)
        first = torch.cumsum(sizes, 0) - sizes  # where each class's boxes start
        values = self.scratch.take(int(sizes.sum()), self.stages[-1].weight.shape[1], self.stages[-1].base)
        offset = torch.empty(a.shape[0], dtype=torch.int64, device=dev)
        width = torch.empty(a.shape[0], dtype=torch.int64, device=dev)
        start = 0
        for k, c in enumerate(counts.tolist()):
            rows = order[start : start + c]
            start += c
            padded = rows[padded_index(c, dev)]  # few distinct shapes: the kernels' plans are reused
            box = self._box(a[padded], pixel[padded], key[padded], apart[k])
            if box is None:
                raise ValueError("interaction: expected pairs whose windows meet before L")
            f = int(first[k])
            values[f : f + c * cells[k]] = box[:c].permute(0, 2, 3, 1).reshape(c * cells[k], -1)
            offset[rows] = f + torch.arange(c, device=dev) * cells[k]
            width[rows] = ww - apart[k][1]
        r0, c0 = self.out_r0[pixel], self.out_c0[pixel]  # (B, 2)
        return Corrections(values=values, offset=offset, width=width, r0=r0.amax(1), c0=c0.amax(1))

    def _box(self, a: torch.Tensor, pixel: torch.Tensor, key: torch.Tensor,
             apart: tuple[int, int]) -> torch.Tensor | None:
        """``(B, C_L, hb, wb)``: ``K_L(J)`` on the shared box of rows whose pixels are all
        ``apart`` = ``(|Δr|, |Δc|)`` apart, through every stage (``None`` when no stage has shared
        cells)."""
        corr: torch.Tensor | None = None
        for st in self.stages:
            rp, cp = st.r0[pixel], st.c0[pixel]  # (B, 2)
            r_top, c_left = rp.amax(1), cp.amax(1)
            hb, wb = st.win[0] - apart[0], st.win[1] - apart[1]
            if hb <= 0 or wb <= 0:
                corr = None  # no shared cells yet: no interaction
                continue
            j = self._interaction(st, a, key, rp, cp, r_top, c_left, (hb, wb), corr)
            corr = F.conv_transpose2d(j, st.weight)  # (B, C_next, hb + kh − 1, wb + kw − 1)
        return corr

    @staticmethod
    def _interaction(st: Stage, a: torch.Tensor, key: torch.Tensor, rp: torch.Tensor, cp: torch.Tensor,
                     r_top: torch.Tensor, c_left: torch.Tensor, box: tuple[int, int],
                     corr: torch.Tensor | None) -> torch.Tensor:
        """``(B, C, hb, wb)``: ``J`` of one stage on the shared box (zero outside the map)."""
        dev = a.device
        hb, wb = box
        rr = r_top.unsqueeze(1) + torch.arange(hb, device=dev)  # (B, hb) map rows
        cc = c_left.unsqueeze(1) + torch.arange(wb, device=dev)
        wh, ww = st.win
        cells = []
        for j in range(2):
            cj = (rr - rp[:, j : j + 1]).unsqueeze(2) * ww + (cc - cp[:, j : j + 1]).unsqueeze(1)  # (B, hb, wb)
            cells.append(st.single[key[:, j : j + 1], cj.view(a.shape[0], -1)])  # (B, hb·wb, C)
        inside = ((rr >= 0) & (rr < st.size[0])).unsqueeze(2) & ((cc >= 0) & (cc < st.size[1])).unsqueeze(1)
        lin = torch.where(inside, rr.unsqueeze(2) * st.size[1] + cc.unsqueeze(1), st.size[0] * st.size[1])
        zb = st.base[a.unsqueeze(1), lin.view(a.shape[0], -1)]  # (B, hb·wb, C)
        zp, zq = cells
        pre = zp + zq - zb
        if corr is not None:
            pre = pre + corr.permute(0, 2, 3, 1).reshape(pre.shape)
        g = st.g
        j_map = _apply(g, pre) - _apply(g, zp) - _apply(g, zq) + _apply(g, zb)
        j_map = j_map * inside.view(a.shape[0], -1, 1).to(j_map.dtype)
        return j_map.view(a.shape[0], hb, wb, -1).permute(0, 3, 1, 2)


@dataclass
class Corrections:
    """``K_L(J)`` for a batch of rows, on each row's shared box at ``L``'s output.

    Attributes:
        values: ``(M, C_L)`` every row's box, row-major, channels-last, rows one after another.
        offset: ``(B,)`` where each row's box starts in ``values``; width: ``(B,)`` its width.
        r0, c0: ``(B,)`` the box origin (map coordinates of ``L``'s output).
    """

    values: torch.Tensor
    offset: torch.Tensor
    width: torch.Tensor
    r0: torch.Tensor
    c0: torch.Tensor

    def at(self, r: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """``(E, C_L)`` at map cells ``row``/``col`` ``(E,)`` of rows ``r`` ``(E,)`` (inside the boxes)."""
        return self.values[self.offset[r] + (row - self.r0[r]) * self.width[r] + (col - self.c0[r])]


def _conv_stops(chain: IncrementalPrefix, layer: int) -> list[tuple[int, _Spatial]] | None:
    """``[(stop, spatial layer)]`` for every convolution before spatial layer ``layer`` (``stop``:
    the number of chain modules up to and including it), or ``None`` when a spatial layer up to
    ``layer`` is not a stride-1 ungrouped convolution (the chain's other modules are elementwise)."""
    for sp in chain.spatial[: layer + 1]:
        m = sp.module
        if not isinstance(m, nn.Conv2d) or m.groups != 1 or _pair(m.stride) != (1, 1):
            return None
    stops: list[tuple[int, _Spatial]] = []
    for sp in chain.spatial[:layer]:
        stops.append((next(i for i, m in enumerate(chain.modules) if m is sp.module) + 1, sp))
    return stops or None


def _between(chain: IncrementalPrefix, conv: nn.Module, nxt: nn.Module) -> nn.Sequential:
    """The chain's elementwise modules after ``conv`` and before ``nxt``."""
    mods = chain.modules
    i, j = next(k for k, m in enumerate(mods) if m is conv), next(k for k, m in enumerate(mods) if m is nxt)
    return nn.Sequential(*mods[i + 1 : j])


def _base_outputs(chain: IncrementalPrefix, x0: torch.Tensor, stops: list[int]) -> list[torch.Tensor]:
    """``(Na, C, H, W)`` base output of the chain's module number ``stop − 1`` for each ``stop``."""
    z = chain.model._normalise(x0.to(chain.model.device, chain.model.dtype))
    out = []
    for i, m in enumerate(chain.modules[: max(stops)]):
        z = m(z)
        if i + 1 in stops:
            out.append(z)
    return out


def _pixel_origins(chain: IncrementalPrefix, pixel: torch.Tensor, width: int,
                   upto: _Spatial) -> tuple[torch.Tensor, torch.Tensor]:
    """Window origins ``(r0, c0)`` of one-pixel changes at the output of spatial layer ``upto``."""
    r, c = pixel // width, pixel % width
    for sp in chain.spatial:
        r, c = sp.origin(r, c)
        if sp is upto:
            break
    return r, c
