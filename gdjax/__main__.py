"""``python -m gdjax``: the same as the ``gdjax`` command."""

from gdjax.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
