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


def lp_upper(cone: Cone, bounds: tuple[float, float], pre: dict[int, tuple[Tensor, Tensor]],
             objective: Tensor | None = None, time_limit: float = 60.0, exact: bool = False) -> float:
    """Upper bound of ``objective · v_target`` (default: the first target element) over the box;
    ``pre`` the bounds of every ReLU input (as :func:`.cone.cone_bounds` returns). ``inf`` if the
    solver does not finish. With ``exact``, a binary per unstable ReLU (``y ≤ x − l(1 − δ)``,
    ``y ≤ u δ``) makes it the mixed-integer program whose optimum is the exact maximum over the
    box; the solver's dual bound is returned (valid also when the time limit stops it)."""
    from scipy import sparse

    off, n = _offsets(cone)
    n_bin = 0  # binaries (exact)
    lb, ub = np.full(n, -np.inf), np.full(n, np.inf)
    empty_i, empty_f = np.zeros(0, dtype=np.int64), np.zeros(0)
    eq_r, eq_c, eq_v, eq_b = [empty_i], [empty_i], [empty_f], [empty_f]
    in_r, in_c, in_v, in_b = [empty_i], [empty_i], [empty_f], [empty_f]
    neq = nin = 0
    for i in sorted(cone.nodes):
        nd = cone.nodes[i]
        s = nd.support.numel()
        rows = np.arange(s) + off[i]
        if nd.kind == "input":
            lb[rows], ub[rows] = bounds
        elif nd.kind == "affine":  # v_i - Σ A v_j = b
            eq_r.append(np.arange(s) + neq)
            eq_c.append(rows)
            eq_v.append(np.ones(s))
            for j, c, m in zip(nd.inputs, nd.cols, nd.mats, strict=True):
                pos = torch.searchsorted(cone.nodes[j].support, c).numpy() + off[j]
                mm = sparse.coo_matrix(m.numpy())
                eq_r.append(mm.row + neq)
                eq_c.append(pos[mm.col])
                eq_v.append(-mm.data)
            eq_b.append(nd.bias.numpy())
            neq += s
        else:
            j = nd.inputs[0]
            where = torch.searchsorted(cone.nodes[j].support, nd.support)
            lo_j, up_j = pre[j][0][where].numpy(), pre[j][1][where].numpy()
            xcol = where.numpy() + off[j]
            lb[rows] = 0.0
            ub[rows] = np.maximum(up_j, 0.0)
            act = lo_j >= 0
            # active: y - x = 0
            k = int(act.sum())
            eq_r += [np.arange(k) + neq, np.arange(k) + neq]
            eq_c += [rows[act], xcol[act]]
            eq_v += [np.ones(k), -np.ones(k)]
            eq_b.append(np.zeros(k))
            neq += k
            un = (lo_j < 0) & (up_j > 0)
            k = int(un.sum())
            su = up_j[un] / (up_j[un] - lo_j[un])
            # x - y <= 0 ; y - su x <= -su l
            in_r += [np.arange(k) + nin, np.arange(k) + nin, np.arange(k) + nin + k, np.arange(k) + nin + k]
            in_c += [xcol[un], rows[un], rows[un], xcol[un]]
            in_v += [np.ones(k), -np.ones(k), np.ones(k), -su]
            in_b += [np.zeros(k), -su * lo_j[un]]
            nin += 2 * k
            if exact:  # y - x - l δ <= -l ; y - u δ <= 0
                d = np.arange(k) + n + n_bin
                r1, r2 = np.arange(k) + nin, np.arange(k) + nin + k
                in_r += [r1, r1, r1, r2, r2]
                in_c += [rows[un], xcol[un], d, rows[un], d]
                in_v += [np.ones(k), -np.ones(k), -lo_j[un], np.ones(k), -up_j[un]]
                in_b += [-lo_j[un], np.zeros(k)]
                nin += 2 * k
                n_bin += k
    cols = n + n_bin
    a_eq = sparse.csr_matrix((np.concatenate(eq_v), (np.concatenate(eq_r), np.concatenate(eq_c))), shape=(neq, cols))
    a_in = sparse.csr_matrix((np.concatenate(in_v), (np.concatenate(in_r), np.concatenate(in_c))), shape=(nin, cols))
    t = cone.target
    w = np.zeros(cols)
    obj = np.zeros(cone.nodes[t].support.numel()) if objective is None else objective.numpy()
    if objective is None:
        obj[0] = 1.0
    w[off[t]:off[t] + obj.size] = -obj  # the solvers minimise
    lb, ub = np.concatenate([lb, np.zeros(n_bin)]), np.concatenate([ub, np.ones(n_bin)])
    if exact:
        return _milp(w, a_in, np.concatenate(in_b), a_eq, np.concatenate(eq_b), lb, ub, n, time_limit)
    from scipy.optimize import linprog

    res = linprog(w, A_ub=a_in if nin else None, b_ub=np.concatenate(in_b) if nin else None, A_eq=a_eq,
                  b_eq=np.concatenate(eq_b), bounds=np.stack([lb, ub], axis=1), method="highs",
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
