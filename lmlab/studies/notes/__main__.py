"""`python -m lmlab.studies.notes cache|notes ...`: the notes commands on the root `lmlab` app,
for use before (or without) their mount in lmlab/cli.py; the same errors and exit codes."""

from __future__ import annotations

import sys

from lmlab import cli as root
from lmlab.studies.notes.cache_cli import cache_app
from lmlab.studies.notes.cli import notes_app


def main() -> int:
    mounted = {g.name for g in root.app.registered_groups}
    for name, sub in (("cache", cache_app), ("notes", notes_app)):
        if name not in mounted:
            root.app.add_typer(sub, name=name)
    return root.main()


if __name__ == "__main__":
    sys.exit(main())
