"""``python -m fmc.central.grafana.dashboards OUT_DIR [--timezone ZONE]``: write the dashboards of both
languages as ``OUT_DIR/<uid>.json`` (how the committed ``grafana/dashboards/*.json`` are made, in the
default zone; another zone for a file-provisioned Grafana of a plan in another one).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fmc.central.grafana.dashboards import DEFAULT_TIMEZONE, write_dashboards
from fmc.central.grafana.dashboards.panels import local_buckets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmc.central.grafana.dashboards",
        description="Write the fmc Grafana dashboards (Chinese and English) as JSON files into OUT_DIR.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="directory for the <uid>.json files")
    parser.add_argument("--timezone", default=DEFAULT_TIMEZONE, metavar="ZONE",
                        help="IANA zone whose local days the buckets of a day or longer are: the plan's [policy] "
                        f"timezone (default {DEFAULT_TIMEZONE}, as the committed files)")
    args = parser.parse_args(argv)
    try:
        local_buckets(args.timezone)
    except ValueError as e:
        parser.error(f"--timezone: {e}")
    try:
        paths = write_dashboards(args.out_dir, args.timezone)
    except OSError as e:
        print(f"cannot write the dashboards into {args.out_dir}: {e.strerror or e}; "
              "pass a directory you can write to", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
