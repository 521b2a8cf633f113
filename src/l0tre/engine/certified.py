"""Certified lower bounds inside the anytime engine.

After the grid pass of level ``t`` has found no flip for an input whose level ``t − 1`` is
already certified, :func:`l0tre.certify.certify_level` tries to prove that *every* real value
of *every* ``t`` features keeps the label. ``certified_lower`` is the largest such ``t``; it
never exceeds the grid ``lower`` (certification is only attempted where the grid pass is
clean, and a certificate implies the grid statement).

A counterexample found by certification (a real-valued flip with ≤ t features) is not used
as an upper bound: upper bounds are about grid values (``lower ≤ d_m^grid ≤ upper``); it only
stops certification for that input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..classifier import Classifier
from ..validate import Choice

__all__ = ["CertifyMode", "CertifyOptions", "Certifier"]


class CertifyMode(Choice):
    OFF = "off"
    ON = "on"  # grid bounds + certified lower bounds
    ONLY = "only"  # certified lower bounds only (no grid pass, no upper-bound search)

    @classmethod
    def argument(cls) -> str:
        return "certify"

    @classmethod
    def aliases(cls) -> dict[object, CertifyMode]:
        return {True: cls.ON, False: cls.OFF, None: cls.OFF}


@dataclass(frozen=True)
class CertifyOptions:
    mode: CertifyMode = CertifyMode.OFF
    method: str = "auto"
    time_limit: float = 60.0  # seconds per input and level


class Certifier:
    """Runs :func:`l0tre.certify.certify_level` for one model (graph built once)."""

    def __init__(self, model: Classifier, shape: tuple[int, int, int], features: str, options: CertifyOptions) -> None:
        from ..certify.target import resolve

        module = model.modules()
        if module is None:
            raise ValueError("certify: needs a torch.nn.Module model (got a plain callable)")
        self.shape = shape
        self.features = features
        self.options = options
        self.target: Any = resolve(model, shape)
        self.seconds = 0.0
        self.attempts = 0
        self.proven = 0
        self._overlaps: torch.Tensor | None = None  # feature pairs mixed by the model (t = 2, 3)
        self._overlaps_done = False

    def level(self, x0: torch.Tensor, label: int, t: int) -> bool:
        """Whether every change of ≤ ``t`` features of ``x0`` ``(C, H, W)`` keeps ``label``
        (given that ≤ ``t − 1`` is already certified)."""
        from ..certify import Status, certify_level
        from ..certify.separable import feature_overlaps

        start = time.perf_counter()
        if t in (2, 3) and not self._overlaps_done:  # input-independent: once per model
            self._overlaps = feature_overlaps(self.target, self.features)
            self._overlaps_done = True
        res = certify_level(self.target, x0, label, t, features=self.features, method=self.options.method,
                            time_limit=self.options.time_limit, overlaps=self._overlaps,
                            separable=self._overlaps is not None)
        self.seconds += time.perf_counter() - start
        self.attempts += 1
        ok = res.status is Status.PROVEN
        self.proven += int(ok)
        return ok
