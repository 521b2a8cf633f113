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
             objective: Tensor | None = None, time_limit: float = 60.0) -> float:
    """Upper bound of ``objective · v_target`` (default: the first target element) over the box;
    ``pre`` the bounds of every ReLU input (as :func:`.cone.cone_bounds` returns). ``inf`` if the
    solver does not finish."""
    from scipy import sparse
    from scipy.optimize import linprog

    off, n = _offsets(cone)
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
    a_eq = sparse.csr_matrix((np.concatenate(eq_v), (np.concatenate(eq_r), np.concatenate(eq_c))), shape=(neq, n))
    a_in = sparse.csr_matrix((np.concatenate(in_v), (np.concatenate(in_r), np.concatenate(in_c))), shape=(nin, n))
    t = cone.target
    w = np.zeros(n)
    obj = np.zeros(cone.nodes[t].support.numel()) if objective is None else objective.numpy()
    if objective is None:
        obj[0] = 1.0
    w[off[t]:off[t] + obj.size] = -obj  # linprog minimises
    res = linprog(w, A_ub=a_in if nin else None, b_ub=np.concatenate(in_b) if nin else None, A_eq=a_eq,
                  b_eq=np.concatenate(eq_b), bounds=np.stack([lb, ub], axis=1), method="highs",
                  options={"time_limit": time_limit})
    return float(-res.fun) if res.status == 0 else float("inf")
