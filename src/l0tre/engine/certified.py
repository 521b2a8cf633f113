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

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..certify.methods import Method
from ..certify.settings import LEVEL_SETTINGS, CertifySettings
from ..classifier import Classifier
from ..validate import Choice, positive_float

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
    """The engine's certification: ``mode``, the bounding ``method`` (``"auto"``: per model)
    and the ``time_limit`` in seconds per input and level; validated on construction (also
    from plain strings, as :meth:`build` names the arguments of :func:`l0tre.evaluate`)."""

    mode: CertifyMode = CertifyMode.OFF
    method: Method | str = Method.AUTO  # a Method after construction
    time_limit: float = 60.0  # seconds per input and level

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", CertifyMode.parse(self.mode))
        object.__setattr__(self, "method", Method.parse(self.method))
        object.__setattr__(self, "time_limit", positive_float("time_limit", self.time_limit))

    @classmethod
    def build(cls, certify: object = False, certify_method: object = "auto",
              certify_time_limit: object = 60.0) -> CertifyOptions:
        """From the arguments of :func:`l0tre.evaluate`, with errors that name them."""
        try:
            method = Method.parse(certify_method)
        except ValueError:
            raise ValueError(f"certify_method: expected one of {tuple(m.value for m in Method)}, "
                             f"got {certify_method!r}") from None
        if isinstance(certify_time_limit, bool) or not isinstance(certify_time_limit, (int, float)) \
                or not certify_time_limit > 0:
            raise ValueError(f"certify_time_limit: expected a positive number of seconds, got {certify_time_limit!r}")
        return cls(CertifyMode.parse(certify), method, float(certify_time_limit))

    @property
    def settings(self) -> CertifySettings:
        """The settings of each :func:`l0tre.certify.certify_level` call."""
        return dataclasses.replace(LEVEL_SETTINGS, method=Method.parse(self.method), time_limit=self.time_limit)


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
        self.settings = options.settings
        self.target: Any = resolve(model, shape)  # build_graph runs the model in IEEE float32 (no TF32)
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
        settings = dataclasses.replace(self.settings, separable=self._overlaps is not None)
        res = certify_level(self.target, x0, label, t, features=self.features, settings=settings,
                            overlaps=self._overlaps)
        self.seconds += time.perf_counter() - start
        self.attempts += 1
        ok = res.status is Status.PROVEN
        self.proven += int(ok)
        return ok
