"""``python -m fmc.central.grafana.dashboards OUT_DIR``: write the dashboards of both languages as
``OUT_DIR/<uid>.json`` (how the committed ``grafana/dashboards/*.json`` are made).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fmc.central.grafana.dashboards import write_dashboards


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmc.central.grafana.dashboards",
        description="Write the fmc Grafana dashboards (Chinese and English) as JSON files into OUT_DIR.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="directory for the <uid>.json files")
    args = parser.parse_args(argv)
    try:
        paths = write_dashboards(args.out_dir)
    except OSError as e:
        print(f"cannot write the dashboards into {args.out_dir}: {e.strerror or e}; "
              "pass a directory you can write to", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
