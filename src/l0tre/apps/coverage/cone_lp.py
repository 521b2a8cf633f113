"""The LP (triangle) relaxation of a cone (:mod:`.cone`): the tightest bound of one target
element among relaxations that treat each ReLU on its own.

Variables are the cone's elements of every node; affine nodes are equalities, an unstable ReLU
``y = max(x, 0)`` with input bounds ``l < 0 < u`` is ``y ≥ 0, y ≥ x, y ≤ u (x − l)/(u − l)``, a
stable one ``y = 0`` or ``y = x``; inputs lie in the box. Solved by HiGHS (``scipy``); the bound
is the LP optimum, which the solver reaches to its tolerances (callers add a margin).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .cone import Cone

__all__ = ["lp_upper"]


def _offsets(cone: Cone) -> tuple[dict[int, int], int]:
    off, n = {}, 0
    for i in sorted(cone.nodes):
        off[i] = n
        n += cone.nodes[i].support.numel()
    return off, n


class _Rows:
    """Sparse constraint rows ``A v (= or ≤) b`` built block by block (COO triplets)."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        self.c: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        self.v: list[np.ndarray] = [np.zeros(0)]
        self.b: list[np.ndarray] = [np.zeros(0)]
        self.count = 0

    def add(self, terms: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rhs: np.ndarray) -> None:
        """``k = rhs.size`` new rows; each term ``(row offsets, columns, values)``."""
        for rr, cc, vv in terms:
            self.r.append(rr + self.count)
            self.c.append(cc)
            self.v.append(vv)
        self.b.append(rhs)
        self.count += rhs.size

    def matrix(self, cols: int) -> object:
        from scipy import sparse

        data = (np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c)))
        return sparse.csr_matrix(data, shape=(self.count, cols))

    def rhs(self) -> np.ndarray:
        return np.concatenate(self.b)


def _affine(cone: Cone, i: int, off: dict[int, int], eq: _Rows) -> None:
    """``v_i − Σ_j A_j v_j = bias``."""
    from scipy import sparse

    nd = cone.nodes[i]
    s = nd.support.numel()
    terms = [(np.arange(s), np.arange(s) + off[i], np.ones(s))]
    for j, c, m in zip(nd.inputs, nd.cols, nd.mats, strict=True):
        pos = torch.searchsorted(cone.nodes[j].support, c).numpy() + off[j]
        mm = sparse.coo_matrix(m.numpy())
        terms.append((mm.row, pos[mm.col], -mm.data))
    eq.add(terms, nd.bias.numpy())


def _relu(cone: Cone, i: int, off: dict[int, int], box: tuple[np.ndarray, np.ndarray],
          pre: dict[int, tuple[Tensor, Tensor]], eq: _Rows, le: _Rows, binaries: int | None) -> int:
    """A ReLU node's rows: ``y = x`` where active, the triangle where unstable and, with
    ``binaries`` (the next free column), the big-M rows of one binary per unstable ReLU.
    Returns how many binaries it adds."""
    nd = cone.nodes[i]
    j = nd.inputs[0]
    rows = np.arange(nd.support.numel()) + off[i]
    where = torch.searchsorted(cone.nodes[j].support, nd.support)
    lo, up = pre[j][0][where].numpy(), pre[j][1][where].numpy()
    xcol = where.numpy() + off[j]
    box[0][rows], box[1][rows] = 0.0, np.maximum(up, 0.0)
    act = lo >= 0
    k = int(act.sum())  # active: y − x = 0
    eq.add([(np.arange(k), rows[act], np.ones(k)), (np.arange(k), xcol[act], -np.ones(k))], np.zeros(k))
    un = (lo < 0) & (up > 0)
    k, y, x, lu, uu = int(un.sum()), rows[un], xcol[un], lo[un], up[un]
    su, rk = uu / (uu - lu), np.arange(k)
    # x − y ≤ 0 ; y − su x ≤ −su l
    le.add([(rk, x, np.ones(k)), (rk, y, -np.ones(k)), (rk + k, y, np.ones(k)), (rk + k, x, -su)],
           np.concatenate([np.zeros(k), -su * lu]))
    if binaries is None:
        return 0
    d = rk + binaries  # y − x − l δ ≤ −l ; y − u δ ≤ 0
    le.add([(rk, y, np.ones(k)), (rk, x, -np.ones(k)), (rk, d, -lu), (rk + k, y, np.ones(k)), (rk + k, d, -uu)],
           np.concatenate([-lu, np.zeros(k)]))
    return k


def lp_upper(cone: Cone, bounds: tuple[float, float], pre: dict[int, tuple[Tensor, Tensor]],
             objective: Tensor | None = None, time_limit: float = 60.0, exact: bool = False) -> float:
    """Upper bound of ``objective · v_target`` (default: the first target element) over the box;
    ``pre`` the bounds of every ReLU input (as :func:`.cone.cone_bounds` returns). ``inf`` if the
    solver does not finish. With ``exact``, a binary per unstable ReLU (``y ≤ x − l(1 − δ)``,
    ``y ≤ u δ``) makes it the mixed-integer program whose optimum is the exact maximum over the
    box; the solver's dual bound is returned (valid also when the time limit stops it)."""
    off, n = _offsets(cone)
    n_bin = 0  # binaries (exact)
    box = (np.full(n, -np.inf), np.full(n, np.inf))
    eq, le = _Rows(), _Rows()
    for i in sorted(cone.nodes):
        nd = cone.nodes[i]
        if nd.kind == "input":
            rows = np.arange(nd.support.numel()) + off[i]
            box[0][rows], box[1][rows] = bounds
        elif nd.kind == "affine":
            _affine(cone, i, off, eq)
        else:
            n_bin += _relu(cone, i, off, box, pre, eq, le, n + n_bin if exact else None)
    cols = n + n_bin
    t = cone.target
    w = np.zeros(cols)
    obj = np.zeros(cone.nodes[t].support.numel()) if objective is None else objective.numpy()
    if objective is None:
        obj[0] = 1.0
    w[off[t]:off[t] + obj.size] = -obj  # the solvers minimise
    lb, ub = np.concatenate([box[0], np.zeros(n_bin)]), np.concatenate([box[1], np.ones(n_bin)])
    if exact:
        return _milp(w, le.matrix(cols), le.rhs(), eq.matrix(cols), eq.rhs(), lb, ub, n, time_limit)
    from scipy.optimize import linprog

    res = linprog(w, A_ub=le.matrix(cols) if le.count else None, b_ub=le.rhs() if le.count else None,
                  A_eq=eq.matrix(cols), b_eq=eq.rhs(), bounds=np.stack([lb, ub], axis=1), method="highs",
                  options={"time_limit": time_limit})
    return float(-res.fun) if res.status == 0 else float("inf")


def _milp(w: np.ndarray, a_in: object, b_in: np.ndarray, a_eq: object, b_eq: np.ndarray, lb: np.ndarray,
          ub: np.ndarray, n: int, time_limit: float) -> float:
    """``max −w·v`` by HiGHS branch and bound; its dual bound (``inf`` if none)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    integrality = np.concatenate([np.zeros(n), np.ones(lb.size - n)])
    cons = [LinearConstraint(a_eq, b_eq, b_eq)]
    if b_in.size:
        cons.append(LinearConstraint(a_in, -np.inf, b_in))
    res = milp(w, integrality=integrality, bounds=Bounds(lb, ub), constraints=cons,
               options={"time_limit": time_limit, "mip_rel_gap": 0.0})
    bound = getattr(res, "mip_dual_bound", None)
    if bound is None or not np.isfinite(bound):
        return float(-res.fun) if res.status == 0 and res.fun is not None else float("inf")
    return float(-bound)
