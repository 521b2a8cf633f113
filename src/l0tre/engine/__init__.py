"""The paper's method: grid and subspaces, sensitivity, bound updates, upper bounds,
tightening and the anytime loop (see docs/architecture.md for the map)."""

from .driver import Engine, ProgressHook, drive

__all__ = ["Engine", "ProgressHook", "drive"]
