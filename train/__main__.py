"""``python -m train <command>``; see ``python -m train --help``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
