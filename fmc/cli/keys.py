"""``fmc keys create|list|revoke``: the API keys of ``fmc api`` (``fmc.central.keys`` keeps them)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TextIO

from fmc.central.keys import SCOPE_HELP, KeyInfo, KeyStore, KeyStoreError, _clean_name, parse_scope
from fmc.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``fmc keys create|list|revoke``; the handler is ``args.handler(args) -> exit code``."""
    keys = subparsers.add_parser("keys", help="API keys of fmc api: create (shown once), list, revoke")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a key and print it once")
    create.add_argument("-c", "--config", required=True, help="central TOML file (its [api] keys_file)")
    create.add_argument("--scope", required=True, help=SCOPE_HELP)
    create.add_argument("--name", default="", help="who or what uses the key (shown by list)")
    listing = actions.add_parser("list", help="every key: id, scope, name, created, revoked (never the key)")
    listing.add_argument("-c", "--config", required=True)
    revoke = actions.add_parser("revoke", help="revoke a key by its id (refused from the next request on)")
    revoke.add_argument("-c", "--config", required=True)
    revoke.add_argument("id", help="the key's id (fmc keys list)")
    keys.set_defaults(handler=keys_main)
    return keys


def keys_main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    from fmc.cli.plugins import load_central_config
    from fmc.core.config import ConfigError

    try:
        path = load_central_config(args.config).api.keys_file
    except ConfigError as e:
        print(e.render(), file=err)
        return EXIT_USAGE
    if args.keys_command == "create":
        try:
            scope = parse_scope(args.scope)
            name = _clean_name(args.name)
        except ValueError as e:
            print(f"fmc keys create: {e}", file=err)
            return EXIT_USAGE
    try:
        store = KeyStore(path)
    except KeyStoreError as e:
        print(f"fmc keys: {e}", file=err)
        return EXIT_FAILURE
    with store:
        if args.keys_command == "create":
            key_id, key = store.create(scope, name)
            print(f"created key {key_id} (scope {scope.text}{f', {name}' if name else ''}):", file=out)
            print(key, file=out)
            print("Copy it now: it is stored only as a hash and cannot be shown again.", file=err)
            return EXIT_OK
        if args.keys_command == "list":
            _print_list(store.list(), out)
            return EXIT_OK
        if args.keys_command == "revoke":
            if not store.revoke(args.id):
                print(f"fmc keys revoke: no key with id {args.id!r} in {path} (fmc keys list shows them)", file=err)
                return EXIT_USAGE
            print(f"revoked key {args.id}", file=out)
            return EXIT_OK
    print(f"fmc keys: unknown action {args.keys_command!r}", file=err)
    return EXIT_USAGE


def _print_list(keys: Iterable[KeyInfo], out: TextIO) -> None:
    rows = [
        (k.id, k.scope.text, k.created.strftime("%Y-%m-%d %H:%M"),
         k.revoked.strftime("revoked %Y-%m-%d %H:%M") if k.revoked else "active", k.name)
        for k in keys
    ]
    if not rows:
        print("no keys (fmc keys create -c central.toml --scope … makes one)", file=out)
        return
    header = ("id", "scope", "created (UTC)", "state", "name")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4], file=out)
