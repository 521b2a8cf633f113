"""Settings of the minimal-L0 attack: the screening mode, the effort presets, the search
configuration built from them, and the validated arguments of :func:`~l0tre.apps.attack.attack`.

* :class:`Screen` — how single features are screened (``auto``, ``exact``, ``gradient``).
* :class:`Effort` — a named search breadth; :data:`EFFORTS` maps each name to its
  :class:`SearchPreset`.
* :class:`SearchConfig` — everything the search moves read: the resolved screen, the preset and
  the fixed limits of the refinement moves.
* :class:`AttackSettings` — the arguments of ``attack`` that do not depend on the model,
  validated once (error messages name the argument).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ...engine.features import FeatureKind
from ...engine.grid import check_epsilon
from ...execution.precision import Precision
from ...validate import Choice, non_negative_int, optional_int, positive_int, positive_seconds

__all__ = ["EFFORTS", "SCREENS", "AttackSettings", "Effort", "Screen", "SearchConfig", "SearchPreset"]


class Screen(Choice):
    """How single features are screened (the paper's level t = 1):

    * ``exact`` — every feature × every ε-grid colour;
    * ``gradient`` — only the preset's ``candidates`` (feature, colour) pairs ranked best by a
      first-order estimate of the margin (needs a ``torch.nn.Module`` model);
    * ``auto`` — ``gradient`` where the model is a ``torch.nn.Module``, else ``exact``.
    """

    AUTO = "auto"
    EXACT = "exact"
    GRADIENT = "gradient"


#: the accepted ``screen`` strings (pinned name).
SCREENS: tuple[str, ...] = tuple(s.value for s in Screen)


class Effort(Choice):
    """A named search breadth; its :class:`SearchPreset` is :attr:`preset` (``EFFORTS[name]``).

    ============  ==========  ========  ====  ======  ======  ===================  =========  ==========  ===========
    effort        candidates  per_step  pool  rounds  starts  colours_per_feature  orderings  exact_rows  relax_steps
    ============  ==========  ========  ====  ======  ======  ===================  =========  ==========  ===========
    ``fast``      16          8         0     0       1       1                    False      0           0
    ``default``   128         16        8     2       1       2                    True       4096        100
    ``thorough``  512         32        16    4       2       2                    True       16384       200
    ============  ==========  ========  ====  ======  ======  ===================  =========  ==========  ===========

    ``fast`` (round 7): a greedy step tries the 8 best gradient-ranked additions, one colour per
    pixel, no pool entries. With 4 + 2 (the round-6 preset) CIFAR-10 paths often wandered (greedy
    examples of up to 40 pixels, tightened to 6 at a quadratic cost in single reverts); 8 + 0
    halves the model rows there (154 → 80 rows + 3 per gradient per image, mean L0 4.53 → 4.04 on
    the 94 benchmark images) and costs MNIST ≈ 15 % more rows for a lower L0 (8.29 → 8.19 on 300
    images).

    ``exact_rows`` (issue 20): with ``screen="auto"`` the screening is exact (every feature ×
    every grid colour, the engine's t = 1 pass, whose cumulative path is then one of the
    candidates) when it costs at most this many model rows per input. The gradient screen
    misleads on adversarially trained models (TRADES SmallCNN, 20 images: mean L0 13.65 with the
    gradient screen, 6.15 with the exact one, 8.30 for the engine's t = 1 path); an MNIST image
    with ε = 0.5 costs 784 × 2 = 1568 rows (exact in ``default``), a CIFAR-10 image with ε = 1
    costs 1024 × 7 = 7168 (exact only in ``thorough``).

    ``relax_steps`` (issue 20): the continuous relaxation (:mod:`.relax`) adds one candidate path.
    On the first 50 correctly classified MNIST test images of ``paper-mnist`` (CPU, shared host)
    the ``default`` preset's mean L0 went 7.28 → 6.86 with 100 steps (CPU 0.38 → 0.39 s/image;
    σ-zero with 1000 steps: 7.02 on the same images); 300 steps gave 6.92, 50 steps 7.16.
    """

    FAST = "fast"
    DEFAULT = "default"
    THOROUGH = "thorough"

    @property
    def preset(self) -> SearchPreset:
        """The search breadth of this effort."""
        return EFFORTS[self.value]


@dataclass(frozen=True)
class SearchPreset:
    """The breadth of the search (validated on construction; errors name the field).

    Attributes:
        candidates: (feature, colour) pairs screened exactly in ``gradient`` mode (≥ 1).
        per_step: gradient-ranked additions tried per greedy step / per edited row (≥ 0).
        pool: additions taken from the screening ranking per greedy step / per edited row (≥ 0).
        rounds: refinement rounds after the first tightening (≥ 0; 0: none).
        starts: greedy runs per input, started from the best ``starts`` screened features (≥ 1).
        colours_per_feature: colours per feature in a gradient ranking (the best few by the
            estimate), so that the ranking covers more features (≥ 1).
        orderings: also run the paper's cumulative orderings (by confidence and by margin).
        exact_rows: with ``screen="auto"``, screen exactly when that costs at most this many
            model rows per input (features × grid colours other than the original; ≥ 0; 0:
            always the gradient screen for ``torch.nn.Module`` models).
        relax_steps: steps of the continuous relaxation (:mod:`.relax`), whose sparsest
            adversarial iterate is one more candidate path (≥ 0; 0: none; needs gradients).
    """

    candidates: int = 128
    per_step: int = 16
    pool: int = 8
    rounds: int = 2
    starts: int = 1
    colours_per_feature: int = 2
    orderings: bool = True
    exact_rows: int = 4096
    relax_steps: int = 100

    def __post_init__(self) -> None:
        for name in ("candidates", "starts", "colours_per_feature"):
            positive_int(name, getattr(self, name))
        for name in ("per_step", "pool", "rounds", "exact_rows", "relax_steps"):
            non_negative_int(name, getattr(self, name))
        if not isinstance(self.orderings, bool):
            raise TypeError(f"orderings: expected a bool, got {type(self.orderings).__name__} {self.orderings!r}")

    def with_overrides(self, *, candidates: int | None = None, rounds: int | None = None) -> SearchPreset:
        """This preset with ``candidates`` and / or ``rounds`` replaced (``None``: kept)."""
        out = self
        if candidates is not None:
            out = dataclasses.replace(out, candidates=candidates)
        if rounds is not None:
            out = dataclasses.replace(out, rounds=rounds)
        return out

    def as_dict(self) -> dict[str, int | bool]:
        """The fields as plain values (for reports)."""
        return dataclasses.asdict(self)


#: the search presets by effort name (see :class:`Effort` for the table and their history).
EFFORTS: Mapping[str, SearchPreset] = MappingProxyType({
    "fast": SearchPreset(candidates=16, per_step=8, pool=0, rounds=0, starts=1, colours_per_feature=1,
                         orderings=False, exact_rows=0, relax_steps=0),
    "default": SearchPreset(candidates=128, per_step=16, pool=8, rounds=2, starts=1, colours_per_feature=2,
                            orderings=True, exact_rows=4096, relax_steps=100),
    "thorough": SearchPreset(candidates=512, per_step=32, pool=16, rounds=4, starts=2, colours_per_feature=2,
                             orderings=True, exact_rows=16384, relax_steps=200),
})


@dataclass(frozen=True)
class SearchConfig:
    """What the search moves read (built by :func:`~l0tre.apps.attack.attack`).

    Attributes:
        screen: :attr:`Screen.EXACT` or :attr:`Screen.GRADIENT` (resolved, never ``AUTO``).
        preset: the search breadth.
        max_steps: greedy steps at most (an example longer than this is not searched for).
        reduce_limit: largest L0 for which the reduce move (L0 − 1) is tried.
        reduce_pairs: pairs of changed features tried per input by the reduce move (those whose
            single reverts raise the margin least).
        moves_per_row: additions tried per edited row in the reduce and swap moves.
        ordering_slack: in gradient mode an ordering's example is tightened only when it is at
            most this many features longer than the greedy one (exact mode: always).
        anytime_rounds: with a time budget, refinement rounds continue past the preset's (while
            a round still moves something and time is left) up to this many (0: the preset's).
    """

    screen: Screen = Screen.GRADIENT
    preset: SearchPreset = SearchPreset()
    max_steps: int = 1 << 30
    reduce_limit: int = 64
    reduce_pairs: int = 8
    moves_per_row: int = 8
    ordering_slack: int = 4
    anytime_rounds: int = 0

    def __post_init__(self) -> None:
        if self.screen is Screen.AUTO:
            raise ValueError("screen: SearchConfig needs a resolved screen ('exact' or 'gradient'), got 'auto'")
        for name in ("max_steps", "reduce_limit", "reduce_pairs", "moves_per_row"):
            positive_int(name, getattr(self, name))
        non_negative_int("ordering_slack", self.ordering_slack)
        non_negative_int("anytime_rounds", self.anytime_rounds)


@dataclass(frozen=True)
class AttackSettings:
    """The arguments of :func:`~l0tre.apps.attack.attack` that do not depend on the model,
    validated (see :meth:`check`)."""

    epsilon: float
    steps: int
    max_pixels: int | None
    time_budget: float | None
    seed: int
    screen: Screen
    effort: Effort
    preset: SearchPreset
    shard_size: int
    batch_size: int | None
    max_memory: int
    features: FeatureKind
    precision: Precision

    @classmethod
    def check(
        cls,
        *,
        epsilon: float,
        max_pixels: int | None,
        time_budget: float | None,
        seed: int,
        screen: str | Screen,
        effort: str | Effort,
        candidates: int | None,
        rounds: int | None,
        shard_size: int,
        batch_size: int | None,
        max_memory: int,
        features: str | FeatureKind,
        precision: str | Precision,
    ) -> AttackSettings:
        """Validate the arguments.

        Raises:
            TypeError, ValueError: an invalid argument (the message names it).
        """
        steps = check_epsilon(epsilon)
        mp = optional_int("max_pixels", max_pixels)
        budget = positive_seconds("time_budget", time_budget)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an integer, got {type(seed).__name__} {seed!r}")
        scr, eff = Screen.parse(screen), Effort.parse(effort)
        preset = eff.preset.with_overrides(
            candidates=None if candidates is None else positive_int("candidates", candidates),
            rounds=None if rounds is None else non_negative_int("rounds", rounds),
        )
        shard = positive_int("shard_size", shard_size)
        prec = Precision.parse(precision)
        if not isinstance(features, str):
            raise TypeError(f"features: expected 'pixel' or 'element', got {type(features).__name__}")
        return cls(
            epsilon=float(epsilon), steps=steps, max_pixels=mp, time_budget=budget, seed=seed, screen=scr,
            effort=eff, preset=preset, shard_size=shard, batch_size=optional_int("batch_size", batch_size),
            max_memory=positive_int("max_memory", max_memory), features=FeatureKind.parse(features),
            precision=prec,
        )
