"""Tests of ``l0tre.attack`` on tiny models (fast; no shared data)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re

import pytest
import torch
from torch import nn

import l0tre
from l0tre.apps.attack import EFFORTS, SCREENS, AttackResult, Effort, Screen, SearchPreset, attack
from l0tre.apps.attack.settings import SearchConfig


def tiny_cnn(seed: int, channels: int = 3, classes: int = 4, side: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * side * side, 16), nn.ReLU(), nn.Linear(16, classes),
    ).eval()


def tiny_mlp(seed: int, features: int = 9, classes: int = 3, width: int = 12) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, width), nn.ReLU(), nn.Linear(width, classes)).eval()


def inputs(seed: int, n: int, shape: tuple[int, int, int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g)


@pytest.fixture(scope="module")
def cnn_case() -> tuple[nn.Module, torch.Tensor, AttackResult]:
    model = tiny_cnn(0)
    x = inputs(1, 12, (3, 6, 6))
    return model, x, attack(model, x)


def test_examples_are_adversarial_and_l0_counts_positions(
    cnn_case: tuple[nn.Module, torch.Tensor, AttackResult],
) -> None:
    model, x, res = cnn_case
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert bool(res.success.all())
    with torch.no_grad():
        pred0 = model(x).argmax(1)
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.predicted, pred0)
    assert bool((pred[res.success] != pred0[res.success]).all())
    assert torch.equal(res.adversarial_label[res.success], pred[res.success])
    positions = (res.x_adv != x).any(dim=1).flatten(1).sum(1)
    assert torch.equal(res.l0, positions)
    assert bool((res.l0[res.success] >= 1).all())
    # several channels of a position change together, still counted once
    elements = (res.x_adv != x).flatten(1).sum(1)
    assert bool((elements >= positions).all())
    assert bool((res.x_adv >= 0).all() and (res.x_adv <= 1).all())


def test_deterministic_under_seed_and_batch_size_invariant(
    cnn_case: tuple[nn.Module, torch.Tensor, AttackResult],
) -> None:
    model, x, ref = cnn_case
    again = attack(model, x, seed=0)
    small = attack(model, x, batch_size=7, shard_size=5)
    for other in (again, small):
        assert torch.equal(other.x_adv, ref.x_adv)
        assert torch.equal(other.l0, ref.l0)
        assert torch.equal(other.success, ref.success)
    # one input alone gives the same example as inside the batch
    alone = attack(model, x[3:4], batch_size=3)
    assert torch.equal(alone.x_adv[0], ref.x_adv[3])


def test_max_pixels_reports_unsuccessful_inputs(cnn_case: tuple[nn.Module, torch.Tensor, AttackResult]) -> None:
    model, x, ref = cnn_case
    budget = int(ref.l0.min())
    res = attack(model, x, max_pixels=budget)
    assert res.success.shape == (x.shape[0],)
    over = ref.l0 > budget
    assert bool(over.any()), "test needs inputs above the budget"
    assert not bool(res.success[over].any())
    assert bool((res.l0[~res.success] == 0).all())
    assert torch.equal(res.x_adv[~res.success], x[~res.success])
    assert bool((res.l0[res.success] <= budget).all())
    assert bool((res.found_l0 >= res.l0).all())
    failed_found = ~res.success & (res.found_l0 > 0)
    assert bool((res.found_l0[failed_found] > budget).all())
    assert res.summary()["success_rate"] < 1.0


def test_misclassified_inputs_are_flagged(cnn_case: tuple[nn.Module, torch.Tensor, AttackResult]) -> None:
    model, x, ref = cnn_case
    labels = ref.predicted.clone()
    labels[:3] = (labels[:3] + 1) % 4
    res = attack(model, x, labels=labels)
    assert torch.equal(res.misclassified, torch.arange(12) < 3)
    assert not bool(res.success[:3].any())
    assert bool((res.l0[:3] == 0).all())
    assert torch.equal(res.x_adv[:3], x[:3])
    assert torch.equal(res.x_adv[3:], ref.x_adv[3:])
    d = res.to_dict()
    json.dumps(d)
    assert d["global"]["attacked"] == 9 and d["global"]["misclassified"] == 3
    assert d["inputs"][0]["misclassified"] is True


def test_never_worse_than_engine_upper_bound() -> None:
    model = tiny_cnn(3, channels=1, side=5)
    x = inputs(4, 10, (1, 5, 5))
    ours = attack(model, x, screen="exact", epsilon=0.5)
    engine = l0tre.evaluate(model, x, epsilon=0.5, t_max=1)
    found = engine.found
    assert bool(found.any())
    assert bool(ours.success[found].all())
    assert bool((ours.l0[found] <= engine.upper[found] + 1).all())


def _grid_minimum(model: nn.Module, x: torch.Tensor, values: torch.Tensor, t_max: int = 4) -> int | None:
    """Smallest number (``<= t_max``) of pixels of ``x`` (1×3×3) to set to ``values`` for a
    label change; ``None`` when more are needed."""
    label = int(model(x).argmax(1))
    flat = x.flatten()
    for t in range(1, t_max + 1):
        for subset in itertools.combinations(range(9), t):
            combos = torch.cartesian_prod(*([values] * t)).view(-1, t)
            batch = flat.repeat(combos.shape[0], 1)
            batch[:, list(subset)] = combos
            ok = (batch[:, list(subset)] != flat[list(subset)]).all(1)
            if not bool(ok.any()):
                continue
            preds = model(batch[ok].view(-1, 1, 3, 3)).argmax(1)
            if bool((preds != label).any()):
                return t
    return None


def test_minimality_against_brute_force() -> None:
    grid = torch.tensor([0.0, 0.5, 1.0])
    fine = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    ones = 0
    with torch.no_grad():
        for seed in range(8):
            model = tiny_mlp(seed)
            x = inputs(100 + seed, 3, (1, 3, 3))
            res = attack(model, x, epsilon=0.5)
            for i in range(x.shape[0]):
                lower = _grid_minimum(model, x[i : i + 1], fine)  # every value the attack may use
                best_grid = _grid_minimum(model, x[i : i + 1], grid)
                if lower is None:  # needs more than 4 pixels
                    assert not bool(res.success[i]) or int(res.l0[i]) > 4
                    continue
                if bool(res.success[i]):
                    assert int(res.l0[i]) >= lower
                if best_grid == 1:
                    ones += 1
                    assert int(res.l0[i]) == 1
    assert ones > 0, "the brute-force cases should include minimum-1 inputs"


def test_callable_model_uses_exact_screen_and_element_features() -> None:
    model = tiny_cnn(5, channels=1, side=4)
    x = inputs(6, 4, (1, 4, 4))

    def fn(z: torch.Tensor) -> torch.Tensor:
        return model(z)

    res = attack(fn, x)
    assert res.config["screen"] == "exact"
    with torch.no_grad():
        assert bool((model(res.x_adv).argmax(1)[res.success] != res.predicted[res.success]).all())
    elem = attack(model, x, features="element")
    assert elem.features == "element"
    assert torch.equal(elem.l0, (elem.x_adv != x).any(1).flatten(1).sum(1))


def test_time_budget_returns_verified_examples(cnn_case: tuple[nn.Module, torch.Tensor, AttackResult]) -> None:
    model, x, _ = cnn_case
    res = attack(model, x, time_budget=1e-9)
    assert res.stopped == "time_budget"
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert bool((pred[res.success] != res.predicted[res.success]).all())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_pixels": 0}, ValueError),
        ({"max_pixels": 1.5}, TypeError),
        ({"epsilon": 0.3}, ValueError),
        ({"screen": "fast"}, ValueError),
        ({"effort": "quick"}, ValueError),
        ({"mode": "fast"}, ValueError),
        ({"candidates": 0}, ValueError),
        ({"time_budget": -1}, ValueError),
        ({"seed": "a"}, TypeError),
        ({"features": "channel"}, ValueError),
        ({"batch_size": 0}, ValueError),
        ({"rounds": -1}, ValueError),
        ({"candidates": True}, TypeError),
        ({"shard_size": 0}, ValueError),
        ({"max_memory": 0}, ValueError),
        ({"effort": 3}, ValueError),
        ({"features": 3}, TypeError),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    model = tiny_cnn(0, channels=1, side=4)
    (name,) = kwargs
    with pytest.raises(error, match=f"^{name}: "):  # the message names the argument
        attack(model, inputs(0, 2, (1, 4, 4)), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("effort", ["fast", "thorough"])
def test_effort_presets_return_verified_examples(effort: str) -> None:
    model = tiny_cnn(3)
    x = inputs(4, 6, (3, 6, 6))
    res = attack(model, x, effort=effort, seed=1)
    assert res.config["effort"] == effort
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert bool((pred[res.success] != res.predicted[res.success]).all())
    assert torch.equal(res.l0, (res.x_adv != x).any(dim=1).flatten(1).sum(1))


@pytest.mark.parametrize("effort", ["fast", "thorough"])
def test_presets_are_batch_size_and_shard_invariant(effort: str) -> None:
    # the fast preset ranks one colour per pixel (ties keep every tied colour): the ranking and
    # the greedy choices must not depend on how rows are batched or inputs sharded
    model = tiny_cnn(5)
    x = inputs(6, 7, (3, 6, 6))
    ref = attack(model, x, effort=effort)
    for other in (attack(model, x, effort=effort, batch_size=5, shard_size=3),
                  attack(model, x[2:3], effort=effort, batch_size=2)):
        lo = 2 if other.x_adv.shape[0] == 1 else 0
        assert torch.equal(other.x_adv, ref.x_adv[lo : lo + other.x_adv.shape[0]])
        assert torch.equal(other.l0, ref.l0[lo : lo + other.x_adv.shape[0]])


def test_torchscript_model_is_attacked() -> None:
    model = torch.jit.script(tiny_cnn(5, channels=1, side=4))
    x = inputs(6, 3, (1, 4, 4))
    res = attack(model, x, screen="exact")
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert bool((pred[res.success] != res.predicted[res.success]).all())


def test_gradient_screen_needs_a_module() -> None:
    with pytest.raises(ValueError, match="screen"):
        attack(lambda z: z.flatten(1)[:, :3], inputs(0, 2, (1, 2, 2)), screen="gradient")


# -- settings: screen, effort presets ---------------------------------------------------------


def _documented_presets() -> dict[str, dict[str, object]]:
    """The table in :class:`Effort`'s docstring, one dict of fields per effort."""
    doc = Effort.__doc__ or ""
    lines = [ln.split() for ln in doc.splitlines() if ln.strip()]
    header = next(ln for ln in lines if ln[0] == "effort")
    rows: dict[str, dict[str, object]] = {}
    for ln in lines:
        m = re.fullmatch(r"``(\w+)``", ln[0])
        if m and len(ln) == len(header):
            rows[m.group(1)] = {k: (v == "True") if v in ("True", "False") else int(v)
                                for k, v in zip(header[1:], ln[1:], strict=True)}
    return rows


def test_each_named_preset_equals_its_documented_fields() -> None:
    documented = _documented_presets()
    assert set(documented) == set(EFFORTS) == {e.value for e in Effort}
    assert set(next(iter(documented.values()))) == {f.name for f in dataclasses.fields(SearchPreset)}
    for name, fields in documented.items():
        assert EFFORTS[name] == SearchPreset(**fields), name  # type: ignore[arg-type]
        assert Effort.parse(name).preset is EFFORTS[name]
    # the values themselves (the benchmarks in docs/benchmarks_attack.md were measured with them)
    assert EFFORTS["fast"] == SearchPreset(candidates=16, per_step=8, pool=0, rounds=0, starts=1,
                                           colours_per_feature=1, orderings=False, exact_rows=0,
                                           relax_steps=0)
    assert EFFORTS["default"] == SearchPreset()
    assert EFFORTS["thorough"] == SearchPreset(candidates=512, per_step=32, pool=16, rounds=4, starts=2,
                                               exact_rows=16384, relax_steps=200)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("candidates", 0, ValueError),
        ("candidates", 2.0, TypeError),
        ("per_step", -1, ValueError),
        ("pool", -1, ValueError),
        ("rounds", -2, ValueError),
        ("rounds", True, TypeError),
        ("starts", 0, ValueError),
        ("colours_per_feature", 0, ValueError),
        ("orderings", 1, TypeError),
        ("exact_rows", -1, ValueError),
        ("relax_steps", -1, ValueError),
    ],
)
def test_preset_validation_names_the_field(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"^{field}: "):
        SearchPreset(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(error, match=f"^{field}: "):
        dataclasses.replace(EFFORTS["fast"], **{field: value})  # type: ignore[arg-type]


def test_presets_are_frozen_and_overrides_make_copies() -> None:
    fast = EFFORTS["fast"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.rounds = 3  # type: ignore[misc]
    assert fast.with_overrides() is fast
    wider = fast.with_overrides(candidates=40, rounds=1)
    assert (wider.candidates, wider.rounds, wider.per_step) == (40, 1, fast.per_step)
    assert EFFORTS["fast"].candidates == 16
    with pytest.raises(ValueError, match="^rounds: "):
        fast.with_overrides(rounds=-1)
    assert fast.as_dict()["orderings"] is False
    with pytest.raises(TypeError):
        EFFORTS["mine"] = fast  # type: ignore[index]


def test_screen_and_effort_are_choices() -> None:
    assert SCREENS == ("auto", "exact", "gradient") == tuple(s.value for s in Screen)
    assert Screen.parse("Exact") is Screen.EXACT and Effort.parse(Effort.FAST) is Effort.FAST
    with pytest.raises(ValueError, match="^screen: .*'gradient'"):
        Screen.parse("fast")
    with pytest.raises(ValueError, match="^effort: .*'thorough'"):
        Effort.parse(None)
    with pytest.raises(ValueError, match="^screen: "):
        SearchConfig(screen=Screen.AUTO)  # the search needs a resolved screen


def test_enum_and_string_settings_give_the_same_attack() -> None:
    model = tiny_cnn(2, channels=1, side=4)
    x = inputs(3, 3, (1, 4, 4))
    plain = attack(model, x, screen="exact", effort="fast", precision="float32")
    typed = attack(model, x, screen=Screen.EXACT, effort=Effort.FAST, precision="float32")
    assert torch.equal(plain.x_adv, typed.x_adv)
    assert plain.config["screen"] == typed.config["screen"] == "exact"
    assert plain.config["effort"] == typed.config["effort"] == "fast"
    # every preset field is recorded, as plain values (results.json)
    assert {k: typed.config[k] for k in EFFORTS["fast"].as_dict()} == EFFORTS["fast"].as_dict()
    overridden = attack(model, x, effort="fast", candidates=5, rounds=1, precision="float32")
    assert (overridden.config["candidates"], overridden.config["rounds"]) == (5, 1)
    json.dumps(typed.to_dict())


# -- the result -------------------------------------------------------------------------------


def test_adversarial_is_a_read_only_alias_of_x_adv(cnn_case: tuple[nn.Module, torch.Tensor, AttackResult]) -> None:
    _, _, res = cnn_case
    assert res.adversarial is res.x_adv
    with pytest.raises(AttributeError):
        res.adversarial = res.x_adv  # type: ignore[misc]
    assert "x_adv" not in res.to_dict() and "x_adv" in res.to_dict(include_adversarial=True)


def test_repr_is_short_and_holds_the_summary(cnn_case: tuple[nn.Module, torch.Tensor, AttackResult]) -> None:
    _, x, res = cnn_case
    text = repr(res)
    assert text.startswith(f"AttackResult(inputs={x.shape[0]}, attacked={x.shape[0]}, successes={x.shape[0]}, ")
    assert f"mean_l0={float(res.l0.double().mean()):.3f}" in text and "stopped='done'" in text
    assert "tensor" not in text and "\n" not in text and len(text) < 200
    none = dataclasses.replace(res, success=torch.zeros_like(res.success), max_pixels=3)
    assert "mean_l0=nan, max_pixels=3" in repr(none)


def test_seconds_is_the_wall_time_of_the_call() -> None:
    """``seconds`` (and ``seconds_per_image`` in to_dict) is the call's own duration, not a clock
    reading (it once subtracted an elapsed time from the clock: thousands of s/image)."""
    import time

    model = tiny_cnn(3)
    x = inputs(4, 5, (3, 6, 6))
    t0 = time.perf_counter()
    res = attack(model, x, effort="fast")
    wall = time.perf_counter() - t0
    assert 0.0 < res.seconds <= wall
    assert res.to_dict()["global"]["seconds_per_image"] == pytest.approx(res.seconds / 5)
