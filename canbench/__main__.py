"""``python -m canbench`` is the ``canbench`` command."""

from canbench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
