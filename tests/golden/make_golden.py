"""Write ``before_renovation.pt``: results of the code *before* the package renovation.

Run once with the pre-renovation code (``python tests/golden/make_golden.py``); the file is
committed and ``test_golden.py`` checks that today's code gives identical bounds and
adversarial examples on the same cases. Uses only the embedded data and generated models,
so it needs no ``../shared``.
"""

from __future__ import annotations

from pathlib import Path

import torch

import l0tre
from tests.golden.cases import attack_cases, certify_cases, engine_cases

OUT = Path(__file__).with_name("before_renovation.pt")


def main() -> None:
    torch.set_num_threads(1)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, (model, x, kwargs) in engine_cases().items():
        r = l0tre.evaluate(model, x, **kwargs)
        out[name] = {"lower": r.lower, "upper": r.upper, "found": r.found, "adversarial": r.adversarial,
                     "adversarial_label": r.adversarial_label}
        print(name, r.global_lower, r.global_upper)
    for name, (model, x, kwargs) in certify_cases().items():
        r = l0tre.evaluate(model, x, **kwargs)
        assert r.certified_lower is not None
        out[name] = {"lower": r.lower, "upper": r.upper, "certified_lower": r.certified_lower}
        print(name, r.global_lower, r.global_upper, r.global_certified_lower)
    for name, (model, x, kwargs) in attack_cases().items():
        a = l0tre.attack(model, x, **kwargs)
        out[name] = {"x_adv": a.x_adv, "success": a.success, "l0": a.l0}
        print(name, float(a.l0[a.success].double().mean()))
    torch.save(out, OUT)


if __name__ == "__main__":
    main()
