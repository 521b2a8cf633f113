"""Level 2 from level-1 pieces: pairs of pixels whose windows never meet.

Let ``L`` be the last convolution of the incremental chain (:mod:`.incremental`). When the
windows of two changed pixels are disjoint at the *input* of ``L``, no activation before ``L``
sees both changes, so ``L``'s input is the base map plus the two single-pixel changes and, ``L``
being linear, its output is ``base + D_i + D_j``, where ``D_i`` is the change that pixel ``i``
alone (at its colour) makes to ``L``'s output — a small window. The table of every ``D`` (each
pixel × each grid colour, per input) is computed once per input through the chain; a pair row
then costs two window additions and the layers after ``L`` (for the paper's MNIST CNN: ReLU,
max-pool and the dense head) instead of the chain for two windows and the last convolution.

Results are the same function up to floating-point summation order; the engine re-checks
every decision near the boundary with the plain forward pass (as for the chain).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..classifier import Classifier, padded_index
from .incremental import IncrementalCaches, IncrementalPrefix
from .interaction import Corrections, Interaction, Scratch
from .sparse_head import SparseHead, entry_product
from .windows import _pair, window_cells

__all__ = ["DENSE_BYTES", "ENTRY_BYTES", "PairRecipe", "PairTable", "build_tables"]

DENSE_BYTES = 64 << 20  # maps after ``L`` evaluated at once on the dense path
ENTRY_BYTES = 4 << 20  # shared-cell values computed at once by PairTable.overlap_change


@dataclass
class PairTable:
    """Single-pixel changes at the output of the chain's last convolution, for one shard.

    Attributes:
        after: the layers after ``L`` (rest of the chain and of the model).
        base_out: ``(Na, H_L·W_L + 1, C_L)`` base output of ``L`` (channels-last, scratch slot last).
        size: ``(H_L, W_L)``.
        delta: ``(Na, n, P1, wh·ww, C_L)`` change of ``L``'s output window per pixel and colour
            (channels-last).
        lin: ``(n, wh·ww)`` where each window position of each pixel lands in ``base_out`` (the
            scratch slot for positions outside the map).
        in_r0, in_c0: ``(n,)`` window origin of each pixel at ``L``'s input; ``in_win`` its size.
        head: ``after`` evaluated on the changed positions only (:mod:`.sparse_head`), or ``None``.
        single: with ``head``: ``(Na·n·P1, K)`` the change of the head's linear output that each
            pixel alone makes at each colour; two pixels whose windows at ``L``'s *output* are
            apart change it by the sum of their two (a row then costs ``O(K)``).
        out_r0, out_c0: ``(n,)`` window origin of each pixel at ``L``'s output (size ``wh × ww``).
    """

    after: nn.Module
    base_out: torch.Tensor
    size: tuple[int, int]
    delta: torch.Tensor
    lin: torch.Tensor
    in_r0: torch.Tensor
    in_c0: torch.Tensor
    in_win: tuple[int, int]
    head: SparseHead | None = None
    single: torch.Tensor | None = None
    out_r0: torch.Tensor | None = None
    out_c0: torch.Tensor | None = None
    out_win: tuple[int, int] = (0, 0)
    chain: IncrementalPrefix | None = None
    caches: IncrementalCaches | None = None
    stop: int = 0
    layer: int = 0
    interaction: Interaction | None = None
    scratch: Scratch = field(default_factory=Scratch)

    @staticmethod
    @torch.no_grad()
    def build(
        chain: IncrementalPrefix, x0: torch.Tensor, palette: torch.Tensor, *, max_bytes: int, rows: int = 512,
        conv: int = -1,
    ) -> PairTable | None:
        """The table for inputs ``x0`` ``(Na, C, H, W)`` and pixel colours ``palette`` ``(P1, C)``
        at the output of the chain's convolution number ``conv`` (``-1``: the last, ``-2``: the one
        before, …); ``None`` when there is no such convolution or the table would exceed
        ``max_bytes``."""
        convs = [i for i, sp in enumerate(chain.spatial) if isinstance(sp.module, nn.Conv2d)]
        if not -len(convs) <= conv < len(convs):
            return None
        li = convs[conv]
        layer = chain.spatial[li]
        stop = next(i for i, m in enumerate(chain.modules) if m is layer.module) + 1
        na, _, h, w = x0.shape
        n, p1 = h * w, palette.shape[0]
        module = layer.module
        assert isinstance(module, nn.Conv2d)  # selected above; narrows the type
        c_out = module.out_channels
        wh, ww = layer.win_out
        if na * n * p1 * c_out * wh * ww * x0.element_size() > max_bytes:
            return None
        dev = x0.device
        caches = chain.base(x0)
        z = chain.model._normalise(x0.to(chain.model.device, chain.model.dtype))
        for m in chain.modules[:stop]:
            z = m(z)
        hl, wl = z.shape[2], z.shape[3]
        base_out = torch.zeros(na, hl * wl + 1, c_out, dtype=z.dtype, device=dev)
        base_out[:, :-1] = z.permute(0, 2, 3, 1).reshape(na, hl * wl, c_out)
        # every (input, pixel, colour) as one row through the chain up to L's output
        a_all = torch.arange(na, device=dev).repeat_interleave(n * p1)
        pix_all = torch.arange(n, device=dev).repeat_interleave(p1).repeat(na)
        col_all = torch.arange(p1, device=dev).repeat(na * n)
        delta = torch.empty(na * n * p1, c_out, wh, ww, dtype=z.dtype, device=dev)
        out_r0 = torch.empty(na * n * p1, dtype=torch.int64, device=dev)
        out_c0 = torch.empty_like(out_r0)
        for i in range(0, a_all.shape[0], rows):
            a, pix, col = a_all[i : i + rows], pix_all[i : i + rows], col_all[i : i + rows]
            (win,) = chain.windows_through(caches, a, chain.pixel_windows(pix, palette[col]), stop)
            crop = _crop(base_out, a, win.r0, win.c0, (hl, wl), (wh, ww))
            delta[i : i + rows] = win.values - crop
            out_r0[i : i + rows], out_c0[i : i + rows] = win.r0, win.c0
        in_r0, in_c0 = _origins(chain, torch.arange(n, device=dev), w, li)
        r0, c0 = out_r0[: n * p1 : p1], out_c0[: n * p1 : p1]  # per pixel (the same for every input)
        lin = window_cells(r0, c0, (wh, ww), (hl, wl))
        after = nn.Sequential(*chain.modules[stop:], chain.rest)
        delta_cl = delta.permute(0, 2, 3, 1).reshape(na, n, p1, wh * ww, c_out).contiguous()
        head = SparseHead.build(after, base_out, (hl, wl))
        single = None if head is None else _single(head, base_out, delta_cl, lin)
        inter = None
        if head is not None and _interaction_bytes(chain, li, na * n * p1, x0.element_size()) <= max_bytes:
            inter = Interaction.build(chain, caches, x0, palette, li, (r0, c0), rows=rows)
        return PairTable(
            after=after, base_out=base_out, size=(hl, wl), delta=delta_cl, lin=lin,
            in_r0=in_r0, in_c0=in_c0, in_win=layer.win_in, head=head, single=single, out_r0=r0, out_c0=c0,
            out_win=(wh, ww), chain=chain, caches=caches, stop=stop, layer=li, interaction=inter,
        )

    def disjoint(self, pixel: torch.Tensor) -> torch.Tensor:
        """``(B,)``: whether the windows of the two pixels ``pixel`` ``(B, 2)`` are disjoint at the
        input of ``L`` (so the row can be computed from the table)."""
        dr = (self.in_r0[pixel[:, 0]] - self.in_r0[pixel[:, 1]]).abs()
        dc = (self.in_c0[pixel[:, 0]] - self.in_c0[pixel[:, 1]]).abs()
        return (dr >= self.in_win[0]) | (dc >= self.in_win[1])

    @torch.no_grad()
    def outputs(self, a: torch.Tensor, pixel: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """Raw model outputs ``(B, K)`` for rows whose pixels ``pixel`` ``(B, 2)`` take palette
        colours ``colour`` ``(B, 2)`` on input ``a`` ``(B,)`` (rows must be :meth:`disjoint`)."""
        n_rows = a.shape[0]
        if n_rows == 0:
            raise ValueError("pairs: expected at least one row")
        pad = padded_index(n_rows, a.device)  # few distinct shapes
        a, pixel, colour = a[pad], pixel[pad], colour[pad]
        if self.head is not None and self.single is not None and pixel.shape[1] == 2:
            return self._from_head(self.head, a, pixel, colour)[:n_rows]
        return self._dense(a, pixel, colour)[:n_rows]

    def _dense(self, a: torch.Tensor, pixel: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """:meth:`outputs` through ``after`` on whole maps (the windows added to the base map),
        at most ``DENSE_BYTES`` of maps at a time."""
        step = max(1, DENSE_BYTES // (self.base_out[0].numel() * self.base_out.element_size()))
        parts = [self._dense_rows(a[i : i + step], pixel[i : i + step], colour[i : i + step])
                 for i in range(0, a.shape[0], step)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _dense_rows(self, a: torch.Tensor, pixel: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        b = a.shape[0]
        na, n, p1, win, ch = self.delta.shape
        slots = self.base_out.shape[1]
        flat = self.base_out.index_select(0, a)
        cells = flat.view(b * slots, ch)
        table = self.delta.view(na * n * p1, win * ch)
        first = (torch.arange(b, device=a.device) * slots).view(b, 1)
        for j in range(pixel.shape[1]):
            # (B·wh·ww,) cells of the window: in-map positions distinct, the rest → the scratch slot
            idx = (first + self.lin[pixel[:, j]]).view(-1)
            d = table.index_select(0, (a * n + pixel[:, j]) * p1 + colour[:, j]).view(-1, ch)
            # in-map cells are distinct: one addition each, as cells[idx] + d (the scratch slot
            # may collect several, it is never read)
            cells.index_add_(0, idx, d)
        hl, wl = self.size
        out = self.after(flat[:, : hl * wl].view(b, hl, wl, -1).permute(0, 3, 1, 2))
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise ValueError("model output: expected shape (N, classes) from the pair table")
        return out

    def _from_head(self, head: SparseHead, a: torch.Tensor, pixel: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """Rows whose windows at ``L``'s output are apart: the sum of the single-pixel changes
        (``O(K)`` a row); the others add :meth:`overlap_change`'s correction on the shared cells."""
        assert self.out_r0 is not None and self.out_c0 is not None  # with a head (build)
        wh, ww = self.out_win
        dr = (self.out_r0[pixel[:, 0]] - self.out_r0[pixel[:, 1]]).abs()
        dc = (self.out_c0[pixel[:, 0]] - self.out_c0[pixel[:, 1]]).abs()
        near = ((dr < wh) & (dc < ww)).nonzero().squeeze(1)
        change = self._singles(a, pixel, colour)
        if near.numel():
            change[near] += self.overlap_change(head, a[near], pixel[near], colour[near])
        return head.finish(a, change)

    def _singles(self, a: torch.Tensor, pixel: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """``(B, K)``: the sum of the rows' two single-pixel changes of the head's linear output."""
        assert self.single is not None  # with a head (build)
        na, n, p1, win, ch = self.delta.shape
        key = (a.unsqueeze(1) * n + pixel) * p1 + colour  # (B, 2)
        return self.single.index_select(0, key[:, 0]) + self.single.index_select(0, key[:, 1])

    @torch.no_grad()
    def chain_outputs(self, a: torch.Tensor, pixel: torch.Tensor, colour: torch.Tensor,
                      values: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(B, K)`` of pair rows whose windows meet *before* ``L`` (not
        :meth:`disjoint`): the chain runs both changes up to ``L``'s input, and ``L`` is evaluated
        only on the cells of its output that both pixels' windows cover (elsewhere each window
        holds its own pixel's change only, so the single-pixel changes plus
        :meth:`overlap_change` give the head's input). ``values`` ``(B, 2, C)``: the pixel-space
        colours (``palette[colour]``)."""
        chain, caches = self.chain, self.caches
        if self.head is None or self.single is None or chain is None or caches is None:
            raise ValueError("pairs: chain_outputs needs a table with a sparse head")
        if self.interaction is not None:  # the interaction of the two changes, layer by layer
            corr = self.interaction.correction(a, pixel, colour)
            change = self._singles(a, pixel, colour) + self.overlap_change(self.head, a, pixel, colour, extra=corr)
            return self.head.finish(a, change)
        wins = [chain.pixel_windows(pixel[:, j], values[:, j])[0] for j in range(2)]
        conv = chain.spatial[self.layer].module
        assert isinstance(conv, nn.Conv2d)  # L (build)
        if conv.groups == 1:
            wins = chain.windows_through(caches, a, wins, self.stop - 1)  # at L's input
            patch = chain.window_patch(caches, a, wins, self.layer)  # (B, hp, wp, C_in): the first pixel's

            def joint(r: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
                return _conv_at(conv, patch, r, cell, self.out_win[1])
        else:  # grouped convolution: L on the whole first window
            first = chain.windows_through(caches, a, wins, self.stop)[0].values
            cl = first.permute(0, 2, 3, 1).reshape(a.shape[0], -1, first.shape[1])

            def joint(r: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
                return cl[r, cell]

        change = self._singles(a, pixel, colour) + self.overlap_change(self.head, a, pixel, colour, joint)
        return self.head.finish(a, change)

    def overlap_change(self, head: SparseHead, a: torch.Tensor, pixel: torch.Tensor, colour: torch.Tensor,
                       joint: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                       extra: Corrections | None = None) -> torch.Tensor:
        """``(B, K)``: what the rows' linear output differs from the sum of their two single
        changes, from the cells of ``L``'s output both windows cover (``g``: the head's
        elementwise layers, ``b`` the base map, ``D`` the single changes)::

            W · (g(z) − g(b + D_p) − g(b + D_q) + g(b))   on the shared cells

        where ``z`` is ``b + D_p + D_q`` (``joint=None``: the changes are apart at ``L``'s input and
        ``L`` is linear), that plus ``extra``'s ``K_L(J)`` (the changes meet before ``L``:
        :mod:`.interaction`), or ``joint(r, cell)`` ``(E, C)``: ``L``'s output with both changes at
        cells ``cell`` ``(E,)`` of the first pixel's window of rows ``r`` ``(E,)``.
        Only the shared in-map cells are computed (as entries of the first pixel's window); each
        map position's weights multiply all rows' cells there at once
        (:func:`.sparse_head.entry_product`)."""
        assert self.out_r0 is not None and self.out_c0 is not None  # with a head (build)
        na, n, p1, win, ch = self.delta.shape
        wh, ww = self.out_win
        dev = a.device
        key = (a.unsqueeze(1) * n + pixel) * p1 + colour  # (B, 2)
        r0, c0 = self.out_r0[pixel], self.out_c0[pixel]  # (B, 2)
        rr = (r0[:, :1] - r0[:, 1:]) + torch.arange(wh, device=dev)  # (B, wh) rows in q's window
        cc = (c0[:, :1] - c0[:, 1:]) + torch.arange(ww, device=dev)  # (B, ww)
        inside = ((rr >= 0) & (rr < wh)).unsqueeze(2) & ((cc >= 0) & (cc < ww)).unsqueeze(1)  # (B, wh, ww)
        cq = (rr.clamp(0, wh - 1).unsqueeze(2) * ww + cc.clamp(0, ww - 1).unsqueeze(1)).view(-1, win)
        table = self.delta.view(na * n * p1, win, ch)
        lin = self.lin.index_select(0, pixel[:, 0])  # (B, win) positions of p's window
        keep = inside.view(-1, win) & (lin < self.base_out.shape[1] - 1)
        idx = keep.view(-1).nonzero().squeeze(1)  # the shared in-map cells, as entries
        r, cell = idx // win, idx % win
        pos, ar, cell_q = lin.view(-1)[idx], a[r], cq.view(-1)[idx]
        e = self.scratch.take(idx.shape[0], ch, self.base_out)
        step = max(1, ENTRY_BYTES // (ch * e.element_size()))  # bounded temporaries (no page-fault storms)
        for i in range(0, idx.shape[0], step):
            sl = slice(i, i + step)
            rs, cs = r[sl], cell[sl]
            dp, dq = table[key[rs, 0], cs], table[key[rs, 1], cell_q[sl]]  # (E, C)
            base = self.base_out[ar[sl], pos[sl]]
            if joint is not None:
                z = joint(rs, cs)
            elif extra is not None:
                first = pixel[rs, 0]
                z = base + dp + dq + extra.at(rs, self.out_r0[first] + cs // ww, self.out_c0[first] + cs % ww)
            else:
                z = base + dp + dq
            e[sl] = (head.activation(z) - head.activation(base + dp) - head.activation(base + dq)
                     + head.base_act[ar[sl], pos[sl]])
        return entry_product(head.weight, r, pos, e, a.shape[0])


def build_tables(chain: IncrementalPrefix, x0: torch.Tensor, palette: torch.Tensor, max_bytes: int) -> list[PairTable]:
    """Level-2 pair tables for the images ``x0`` ``(Na, C, H, W)`` at the last two convolutions of
    ``chain`` (the t = 1 chain), deepest first; the second only when the first has no sparse head
    (the other rows then go through the chain, whose head is as sparse)."""
    tables: list[PairTable] = []
    for conv in (-1, -2):
        tab = PairTable.build(chain, x0, palette, conv=conv, max_bytes=max_bytes)
        if tab is not None:
            tables.append(tab)
            if tab.head is not None:
                break
    return tables


@dataclass
class PairRecipe:
    """How to build a shard's pair tables (:func:`build_tables`) where its units run, once: a
    cluster worker builds its own instead of receiving them (they are far larger than their
    inputs). ``palette`` ``(P1, C)``; ``shape`` ``(C, H, W)``; the t = 1 chain is built again
    from the model (:meth:`.IncrementalPrefix.build` is deterministic)."""

    palette: torch.Tensor
    max_bytes: int
    shape: tuple[int, int, int]
    built: list[PairTable] | None = field(default=None, repr=False, compare=False)

    def tables(self, model: Classifier, x0: torch.Tensor) -> list[PairTable]:
        """The tables for the shard's images ``x0`` (built on the first call)."""
        if self.built is None and x0.shape[0] == 0:
            return []
        if self.built is None:
            chain = IncrementalPrefix.build(model, self.shape)
            self.built = [] if chain is None else build_tables(chain, x0, self.palette.to(x0.device), self.max_bytes)
        return self.built

    def __getstate__(self) -> dict[str, object]:
        """Pickled without the tables (a worker builds its own)."""
        return {"palette": self.palette, "max_bytes": self.max_bytes, "shape": self.shape, "built": None}


def _single(head: SparseHead, base_out: torch.Tensor, delta: torch.Tensor, lin: torch.Tensor) -> torch.Tensor:
    """``(Na·n·P1, K)`` change of the head's linear output for every (input, pixel, colour) alone,
    from ``delta`` ``(Na, n, P1, wh·ww, C)`` at the positions ``lin`` ``(n, wh·ww)``. The rows of
    one pixel share its positions, so they share its weights: one product per pixel (a head with
    many outputs: each map position's weights once for a block of pixels,
    :meth:`.SparseHead.change_positional`)."""
    na, n, p1, win, ch = delta.shape
    out = torch.empty(na, n, p1, head.weight.shape[2], dtype=delta.dtype, device=base_out.device)
    a = torch.arange(na, device=base_out.device).repeat_interleave(p1)  # (Na·P1,)
    if not head.cheap:
        step = max(1, ENTRY_BYTES // max(1, na * p1 * win * ch * delta.element_size()))
        for p0 in range(0, n, step):
            block = torch.arange(p0, min(n, p0 + step), device=base_out.device)
            m = block.shape[0]
            lin_r = lin[block].unsqueeze(0).unsqueeze(2).expand(na, m, p1, win)  # (Na, m, P1, win)
            z = base_out[torch.arange(na, device=a.device).view(na, 1, 1, 1), lin_r] + delta[:, block]
            rows = torch.arange(na, device=a.device).repeat_interleave(m * p1)
            flat_lin = lin_r.reshape(-1, win)
            own = torch.ones_like(flat_lin, dtype=torch.bool)
            out[:, p0 : p0 + m] = head.change_positional(rows, flat_lin, z.view(-1, win, ch), own).view(na, m, p1, -1)
        return out.view(na * n * p1, -1)
    for pix in range(n):
        z = base_out[:, lin[pix]].unsqueeze(1) + delta[:, pix]  # (Na, P1, win, C)
        out[:, pix] = head.change_shared(a, lin[pix], z.view(na * p1, win, ch)).view(na, p1, -1)
    return out.view(na * n * p1, -1)


def _interaction_bytes(chain: IncrementalPrefix, layer: int, rows: int, size: int) -> int:
    """Bytes of the single-pixel tables of :class:`.interaction.Interaction` (every convolution
    before spatial layer ``layer``; ``rows`` = inputs × pixels × colours)."""
    return sum(rows * sp.win_out[0] * sp.win_out[1] * getattr(sp.module, "out_channels", 0) * size
               for sp in chain.spatial[:layer])


def _conv_at(conv: nn.Conv2d, patch: torch.Tensor, r: torch.Tensor, cell: torch.Tensor, ww: int) -> torch.Tensor:
    """``(E, C_out)``: the convolution ``conv`` at output cells ``cell`` ``(E,)`` (row-major in a
    window ``ww`` wide) of the patches ``patch[r]`` (``patch`` ``(B, hp, wp, C_in)`` channels-last,
    ``r`` ``(E,)``), each cell from its ``kh × kw`` receptive field (groups = 1)."""
    (kh, kw), (sh, sw) = _pair(conv.kernel_size), _pair(conv.stride)
    b, hp, wp, c_in = patch.shape
    dev = patch.device
    top = (r * hp + (cell // ww) * sh) * wp + (cell % ww) * sw  # (E,) first input cell
    offs = (torch.arange(kh, device=dev).view(kh, 1) * wp + torch.arange(kw, device=dev)).view(1, -1)
    cols = patch.reshape(b * hp * wp, c_in)[(top.unsqueeze(1) + offs).view(-1)].view(-1, kh * kw * c_in)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # (C_out, kh·kw·C_in)
    return torch.nn.functional.linear(cols, weight, conv.bias)


def _crop(flat: torch.Tensor, a: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor,
          size: tuple[int, int], win: tuple[int, int]) -> torch.Tensor:
    """``(B, C, wh, ww)`` crop of the channels-last maps ``flat`` ``(N, H·W + 1, C)`` (zero outside)."""
    lin = window_cells(r0, c0, win, size)
    vals = flat[a.view(-1, 1).expand_as(lin), lin]  # (B, wh·ww, C); the scratch slot reads 0
    return vals.view(a.shape[0], win[0], win[1], -1).permute(0, 3, 1, 2)


def _origins(chain: IncrementalPrefix, pixel: torch.Tensor, width: int, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Window origins ``(r0, c0)`` of one-pixel changes at the input of spatial layer ``upto``."""
    r, c = pixel // width, pixel % width
    for sp in chain.spatial[:upto]:
        r, c = sp.origin(r, c)
    return r, c
