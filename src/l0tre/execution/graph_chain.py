"""Incremental evaluation through residual networks: the windowed program of :mod:`.graph_trace`.

The same idea as :mod:`.incremental` (recompute only the part of each feature map a changed
pixel reaches), for models whose dataflow is a graph: every step of the traced program is
evaluated on windows, from patches of the base maps with every window pasted in, so changes
whose windows meet are combined exactly. A residual sum adds the two branches on a *frame* that
holds both windows. At the cut, the base map with the windows pasted goes through the rest of
the network as usual.

Measured on this project's ResNets: see ``docs/benchmarks.md`` (E11). The result is the same
function up to floating-point summation order; the engine re-checks every decision whose margin
is within ``BOUNDARY_TOL`` of zero with the plain forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..classifier import Classifier
from .graph_trace import GraphProgram, Step, trace_program
from .incremental import IncrementalCaches, IncrementalPrefix
from .windows import Window, paste_clipped, window_cells

__all__ = ["CHUNK_BYTES", "CUDA_CHUNK_BYTES", "GraphPrefix", "build_chain"]

#: bytes of the cut's map copied per call (rows beyond it are split into more calls)
CHUNK_BYTES = 16 << 20
#: the same on a CUDA device: large calls keep the GPU busy (16 MB would be ≈ 80 rows of a
#: 224×224 ResNet's cut map: thousands of small kernel launches)
CUDA_CHUNK_BYTES = 1 << 30
MIN_CHUNK = 8


@dataclass
class GraphPrefix(IncrementalPrefix):
    """See the module docstring. Build with :meth:`trace` (``None`` when not applicable).

    The inherited ``modules`` / ``spatial`` lists stay empty: the level-2 pair tables, which
    need a plain chain, are not built for a graph (:attr:`supports_pairs`)."""

    program: GraphProgram | None = None
    cache_of: list[tuple[int, ...]] = field(default_factory=list)  # step → its cached maps
    last_read: list[int] = field(default_factory=list)  # step → the last step that reads it
    bounded_chunks: ClassVar[bool] = True

    @staticmethod
    def trace(model: Classifier, shape: tuple[int, int, int], max_share: float = 0.8,
              windows: int = 1) -> GraphPrefix | None:
        """The program of ``model`` for inputs of ``shape`` ``(C, H, W)`` with ``windows``
        changed pixels per row; ``None`` when it has no spatial step (see
        :func:`~.graph_trace.trace_program`)."""
        if windows < 1:
            raise ValueError(f"windows: expected a positive int, got {windows!r}")
        module = model.modules()
        if module is None:
            return None
        program = trace_program(module, shape, max_share=max_share, windows=windows)
        if program is None:
            return None
        cache_of: list[tuple[int, ...]] = []
        n = 0
        for step in program.steps:
            k = {"spatial": 1, "add": 2}.get(step.kind, 0)
            cache_of.append(tuple(range(n, n + k)))
            n += k
        return GraphPrefix(model=model, modules=[], spatial=[], rest=program.rest, channels=shape[0],
                           program=program, cache_of=cache_of, last_read=program.last_read)

    def max_chunk(self, caches: IncrementalCaches) -> int:
        """Rows per call such that the copies of the cut's map stay within ``CHUNK_BYTES`` (GPU:
        ``CUDA_CHUNK_BYTES``; on 224×224 inputs a row's map is ≈ 0.4 MB, and 512 rows at once
        cost seconds of page faults on a CPU)."""
        per_row = caches.rest[0].numel() * caches.rest.element_size()
        budget = CUDA_CHUNK_BYTES if caches.rest.device.type == "cuda" else CHUNK_BYTES
        rows = budget // max(1, per_row)
        if rows >= 32:  # a multiple of 32: a call is padded to one (bucket_rows), not wasted on
            rows -= rows % 32
        return max(MIN_CHUNK, rows)

    @property
    def supports_pairs(self) -> bool:
        return False

    @property
    def depth(self) -> int:
        return len(self._program.steps)

    @property
    def image_width(self) -> int:
        return self._program.image[2]

    @property
    def _program(self) -> GraphProgram:
        if self.program is None:
            raise RuntimeError("GraphPrefix: built without a program (use GraphPrefix.trace)")
        return self.program

    # -- base maps ------------------------------------------------------------------------------
    @torch.no_grad()
    def base(self, x0: torch.Tensor) -> IncrementalCaches:
        """Base maps of the inputs ``x0`` ``(N, C, H, W)`` (pixel space): every map a spatial step
        or a sum reads, channels-last, and the cut's map for the rest of the network."""
        z = self.model._normalise(x0.to(self.model.device, self.model.dtype))
        pixels = z.reshape(z.shape[0], z.shape[1], -1)
        maps: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []
        for step in self._program.steps:
            if step.kind == "input":
                maps.append(z)
                continue
            src = [maps[i] for i in step.inputs]
            if step.kind == "spatial":
                assert step.spatial is not None
                pad = [step.margin_lo[1], step.margin_hi[1], step.margin_lo[0], step.margin_hi[0]]
                inputs.append(F.pad(src[0], pad, value=step.spatial.pad_value).permute(0, 2, 3, 1).contiguous())
                maps.append(step.spatial.full(src[0]))
            elif step.kind == "add":
                inputs.extend(s.permute(0, 2, 3, 1).contiguous() for s in src)
                maps.append(src[0] + src[1])
            else:
                assert step.pointwise is not None
                maps.append(step.pointwise(src[0]))
        out = maps[-1]
        n, c, h, w = out.shape
        rest = torch.zeros(n, h * w + 1, c, dtype=out.dtype, device=out.device)
        rest[:, :-1] = out.permute(0, 2, 3, 1).reshape(n, -1, c)
        return IncrementalCaches(inputs=inputs, rest=rest, pixels=pixels, rest_size=(h, w), head=None)

    # -- perturbed rows -------------------------------------------------------------------------
    def windows_through(
        self, caches: IncrementalCaches, a: torch.Tensor, wins: list[Window], stop: int, start: int = 0,
    ) -> list[Window]:
        """The input windows ``wins`` (one pixel each, normalised values) through the whole program:
        the windows at the cut (``stop`` / ``start`` are those of the plain chain and ignored)."""
        steps = self._program.steps
        w_img = self.image_width
        pix = [w.r0 * w_img + w.c0 for w in wins]
        org = [s.org.to(a.device) for s in steps]
        last = self.last_read
        vals: dict[int, list[torch.Tensor]] = {}
        for i, step in enumerate(steps):
            if step.kind == "input":
                vals[i] = [w.values for w in wins]
            elif step.kind == "pointwise":
                assert step.pointwise is not None
                vals[i] = [step.pointwise(v) for v in vals[step.inputs[0]]]
            elif step.kind == "spatial":
                vals[i] = self._spatial(caches, a, i, step, pix, org, vals)
            else:
                vals[i] = self._add(caches, a, i, step, pix, org, vals)
            for j in step.inputs:
                if last[j] == i:
                    vals.pop(j, None)
        o = org[-1]
        return [Window(v, o[p, 0], o[p, 1]) for v, p in zip(vals[len(steps) - 1], pix, strict=True)]

    def _windows_at(self, i: int, vals: list[torch.Tensor], pix: list[torch.Tensor],
                    org: list[torch.Tensor]) -> list[Window]:
        return [Window(v, org[i][p, 0], org[i][p, 1]) for v, p in zip(vals, pix, strict=True)]

    def _spatial(self, caches: IncrementalCaches, a: torch.Tensor, i: int, step: Step, pix: list[torch.Tensor],
                 org: list[torch.Tensor], vals: dict[int, list[torch.Tensor]]) -> list[torch.Tensor]:
        """Values of the output windows of spatial step ``i``: the layer on patches of its cached
        input map with every input window pasted (window parts outside the map read its padding)."""
        sp = step.spatial
        assert sp is not None
        src_i = step.inputs[0]
        src = self._program.steps[src_i]
        base = caches.inputs[self.cache_of[i][0]]
        wins = [_masked(w, src.map, sp.pad_value) for w in self._windows_at(src_i, vals[src_i], pix, org)]
        (hp, wp), (sh, sw) = step.patch, sp.stride
        out = []
        for p in pix:
            r = org[i][p, 0] * sh - sp.padding[0]  # patch origin in the input map
            c = org[i][p, 1] * sw - sp.padding[1]
            flat = _gather(base, a, r + step.margin_lo[0], c + step.margin_lo[1], (hp, wp))
            for w in wins:
                paste_clipped(flat, w, (hp, wp), r, c)
            patch = flat[:, : hp * wp].view(a.shape[0], hp, wp, -1).permute(0, 3, 1, 2)
            out.append(sp.run(patch))
        return out

    def _add(self, caches: IncrementalCaches, a: torch.Tensor, i: int, step: Step, pix: list[torch.Tensor],
             org: list[torch.Tensor], vals: dict[int, list[torch.Tensor]]) -> list[torch.Tensor]:
        """Values of the frames of sum step ``i``: each input's base map on the frame with that
        input's windows pasted, added."""
        fh, fw = step.patch
        out = []
        for j, p in enumerate(pix):
            r, c = org[i][p, 0], org[i][p, 1]
            total: torch.Tensor | None = None
            for k, src_i in enumerate(step.inputs):
                src = self._program.steps[src_i]
                if step.whole[k]:
                    part = vals[src_i][j]  # the window is the frame: it holds every change there
                else:
                    base = caches.inputs[self.cache_of[i][k]]
                    flat = _gather(base, a, r, c, (fh, fw), clamp=src.map)
                    for w in self._windows_at(src_i, vals[src_i], pix, org):
                        paste_clipped(flat, w, (fh, fw), r, c)
                    part = flat[:, : fh * fw].view(a.shape[0], fh, fw, -1).permute(0, 3, 1, 2)
                total = part if total is None else total + part
            assert total is not None
            out.append(total)
        return out



def _masked(w: Window, size: tuple[int, int], fill: float) -> Window:
    """``w`` with its positions outside a map of ``size`` set to ``fill``."""
    b, _, wh, ww = w.values.shape
    inside = (window_cells(w.r0, w.c0, (wh, ww), size) < size[0] * size[1]).view(b, 1, wh, ww)
    return Window(torch.where(inside, w.values, torch.full_like(w.values[:1, :1, :1, :1], fill)), w.r0, w.c0)


def _gather(base: torch.Tensor, a: torch.Tensor, r: torch.Tensor, c: torch.Tensor, size: tuple[int, int],
            clamp: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, h·w + 1, C)``: the patches of ``size`` at rows ``r`` / cols ``c`` ``(B,)`` of the
    channels-last maps ``base`` ``(N, Hm, Wm, C)`` of inputs ``a``, plus a scratch slot. With
    ``clamp`` (the map size), positions outside it read a clamped position (junk, masked later)."""
    b = a.shape[0]
    hm, wm, ch = base.shape[1], base.shape[2], base.shape[3]
    rows = r.unsqueeze(1) + torch.arange(size[0], device=a.device)
    cols = c.unsqueeze(1) + torch.arange(size[1], device=a.device)
    if clamp is not None:
        rows, cols = rows.clamp(0, clamp[0] - 1), cols.clamp(0, clamp[1] - 1)
    lin = ((a.view(b, 1, 1) * hm + rows.unsqueeze(2)) * wm + cols.unsqueeze(1)).view(b, -1)
    lin = torch.cat([lin, lin[:, :1]], dim=1)
    return base.view(-1, ch).index_select(0, lin.view(-1)).view(b, size[0] * size[1] + 1, ch)


def build_chain(model: Classifier, shape: tuple[int, int, int], windows: int = 1,
                max_share: float = 0.8) -> IncrementalPrefix | None:
    """The incremental chain for ``model`` on inputs of ``shape`` ``(C, H, W)`` with ``windows``
    changed pixels per row: the plain chain of a ``Sequential`` (:class:`.IncrementalPrefix`,
    which also supports the level-2 pair tables) unless the traced graph windows more
    convolutions (residual blocks, padded pooling); ``None`` when neither applies."""
    flat = IncrementalPrefix.build(model, shape, max_share=max_share, windows=windows)
    graph = GraphPrefix.trace(model, shape, max_share=max_share, windows=windows)
    if graph is None or graph.program is None:
        return flat
    if flat is not None and sum(isinstance(sp.module, torch.nn.Conv2d) for sp in flat.spatial) >= graph.program.convs:
        return flat
    return graph
