"""Helper process for the spool's kill tests (``tests/test_spool.py``): appends until killed.

    python spool_child.py SPOOL_PATH --start SEQ --batch N [--synchronous full|normal] [--max-bytes B]

Appends batches of ``N`` points with sequence numbers ``SEQ, SEQ+1, ...`` forever, and after each
``append`` has returned (the batch is committed) prints that batch's last sequence number on its
own line, flushed. The test SIGKILLs it at some moment and checks the spool against what was
printed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from fmc.agent.spool import Spool
from fmc.core.points import Priority


def make_line(seq: int) -> str:
    """The line for sequence number ``seq``: its content is a function of ``seq`` (with a digest),
    so a torn, mixed-up or truncated row cannot pass for the right one."""
    digest = hashlib.sha256(str(seq).encode()).hexdigest()
    return f'crash_test,run=child seq={seq}i,check="{digest}" {seq}'


def priority_of(seq: int) -> Priority:
    """Mostly raw, some events, a rollup every tenth point (exercises the drop policy)."""
    if seq % 10 == 0:
        return Priority.ROLLUP
    if seq % 10 in (3, 7):
        return Priority.EVENT
    return Priority.RAW


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--start", type=int, default=1)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    parser.add_argument("--max-bytes", type=int, default=1 << 30)
    args = parser.parse_args(argv)

    spool = Spool(args.path, max_bytes=args.max_bytes, synchronous=args.synchronous)
    seq = args.start
    while True:
        batch = [(make_line(s), priority_of(s)) for s in range(seq, seq + args.batch)]
        spool.append(batch)
        seq += args.batch
        # printed only once append returned: the test treats every printed number as committed
        sys.stdout.write(f"{seq - 1}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
