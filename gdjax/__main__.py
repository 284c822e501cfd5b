"""``python -m gdjax``: the same as the ``gdjax`` command."""

from gdjax.cli import entry

if __name__ == "__main__":
    raise SystemExit(entry())
