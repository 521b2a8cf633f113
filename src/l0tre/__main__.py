"""``python -m l0tre``: the command line (see :mod:`l0tre.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
