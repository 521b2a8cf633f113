"""Running the engine beyond one process: :class:`RayExecutor` (needs ``pip install 'l0tre[ray]'``).

Importing this package imports Ray; nothing else in ``l0tre`` imports it (the CLI only when
``--ray`` is given).
"""

from __future__ import annotations

from .ray_executor import RayExecutor, WorkerKind

__all__ = ["RayExecutor", "WorkerKind"]
