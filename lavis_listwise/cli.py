"""``lavis_listwise.cli``: the command line's home inside the package.

The parser and the commands live in the top-level module :mod:`lavis_listwise_cli` (the
``lavis-listwise`` entry point), so that ``--help``, ``--version`` and argument errors answer without
importing this package, LAVIS or torch. ``python -m lavis_listwise`` runs the same ``main``.
"""

from __future__ import annotations

import sys

from lavis_listwise_cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
