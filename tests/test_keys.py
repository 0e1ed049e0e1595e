"""API keys: hashed at rest, shown once, revocable; scope parsing; the access rules of ``KeyScope``
checked exhaustively over every scope form × level × region filter; ``fmc keys`` exit codes."""

from __future__ import annotations

import argparse
import io
import itertools
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from fmc.central.keys import (
    AccessDenied,
    BadCombination,
    KeyScope,
    KeyStore,
    KeyStoreError,
    ScopeError,
    parse_scope,
    split_key,
)
from fmc.central.store import Scope
from fmc.cli import keys as keys_cli

LEVELS = ("enterprise", "county", "city", "province", "industry")
DIGITS = {"province": 2, "city": 4, "county": 6}


# --- the keys file ------------------------------------------------------------------------------------------


def test_key_is_hashed_at_rest_and_shown_once(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with KeyStore(path) as store:
        key_id, key = store.create("region:3306", "绍兴市经信局")
        assert key.startswith(f"fmc_{key_id}_") and len(key.split("_", 2)[2]) >= 43
        assert store.authenticate(key) == KeyScope("region", region="3306")
        secret = key.split("_", 2)[2]
        listed = store.list()
        assert [(k.id, k.scope.text, k.name, k.revoked) for k in listed] == [(key_id, "region:3306", "绍兴市经信局",
                                                                              None)]
        assert secret not in repr(listed)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("keys.db"))
    assert secret.encode() not in raw and key.encode() not in raw  # neither the key nor its secret is on disk
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as db:
        (digest,) = db.execute("SELECT secret_sha256 FROM api_keys").fetchone()
    import hashlib

    assert digest == hashlib.sha256(secret.encode()).digest()


def test_every_key_is_different_and_random(tmp_path: Path) -> None:
    with KeyStore(tmp_path / "keys.db") as store:
        made = [store.create("province") for _ in range(50)]
    assert len({k for _, k in made}) == 50 and len({i for i, _ in made}) == 50


def test_authenticate_refuses_everything_else(tmp_path: Path) -> None:
    with KeyStore(tmp_path / "keys.db") as store:
        key_id, key = store.create("enterprise:91330602A1")
        other_id, other = store.create("province")
        secret = key.split("_", 2)[2]
        bad = [
            None, "", " ", key[:-1], key + "x", key.upper(), f"fmc_{other_id}_{secret}",  # right secret, wrong id
            f"fmc_{key_id}_{other.split('_', 2)[2]}", "fmc__" + secret, secret, f"Bearer {key}",
            f"fmc_{key_id}_{secret}'; DROP TABLE api_keys; --", "fmc_' OR 1=1 --_" + secret, "\x00" + key,
            "fmc_" + "0" * 12 + "_" + "x" * 4000,
        ]
        for candidate in bad:
            assert store.authenticate(candidate) is None, candidate  # type: ignore[arg-type]
        assert store.authenticate(f"  {key}  ") is not None  # surrounding blanks of a pasted key are fine
        assert store.authenticate(key) == KeyScope("enterprise", enterprise="91330602A1")
        assert len(store.list()) == 2  # the injection attempts changed nothing


def test_revoke_takes_effect_at_once_and_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    server_side = KeyStore(path)  # as the running API holds it
    with KeyStore(path) as cli_side:
        key_id, key = cli_side.create("province", "statistics")
        assert server_side.authenticate(key) is not None
        assert cli_side.revoke(key_id) is True
        first = cli_side.list()[0].revoked
        assert first is not None
        assert cli_side.revoke(key_id) is True and cli_side.list()[0].revoked == first  # keeps the first time
        assert cli_side.revoke("000000000000") is False
    assert server_side.authenticate(key) is None
    server_side.close()


def test_a_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE points (x)")
    with pytest.raises(KeyStoreError, match="not an fmc keys file"):
        KeyStore(other)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(KeyStoreError, match=r"garbage\.db"):
        KeyStore(garbage)


def test_key_names_are_bounded(tmp_path: Path) -> None:
    with KeyStore(tmp_path / "keys.db") as store:
        with pytest.raises(ValueError, match="printable"):
            store.create("province", "a\nb")
        with pytest.raises(ValueError, match="200"):
            store.create("province", "x" * 201)
        assert store.list() == []


def test_split_key() -> None:
    assert split_key("fmc_0123456789ab_" + "A-_b" * 11) == ("0123456789ab", "A-_b" * 11)
    assert split_key("fmc_0123456789AB_" + "x" * 43) is None  # ids are lower-case hex
    assert split_key("fmc_0123456789ab_short") is None


# --- scope parsing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("province", KeyScope("province")),
        ("region:33", KeyScope("region", region="33")),
        ("region:3306", KeyScope("region", region="3306")),
        ("region:330602", KeyScope("region", region="330602")),
        ("enterprise:91330602MA2BXXXX1X", KeyScope("enterprise", enterprise="91330602MA2BXXXX1X")),
        ("enterprise:a.b-c_d", KeyScope("enterprise", enterprise="a.b-c_d")),
    ],
)
def test_parse_scope_accepts_the_three_forms(text: str, scope: KeyScope) -> None:
    assert parse_scope(text) == scope
    assert parse_scope(text).text == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is not one of"),
        ("Province", "is not one of"),
        ("province:33", "is not one of"),
        ("city:3306", "is not one of"),
        ("region:", "2, 4 or 6 digits"),
        ("region:3", "2, 4 or 6 digits"),
        ("region:330", "2, 4 or 6 digits"),
        ("region:33060", "2, 4 or 6 digits"),
        ("region:3306021", "2, 4 or 6 digits"),
        ("region:33.*", "2, 4 or 6 digits"),
        ("region:３３", "2, 4 or 6 digits"),  # full-width digits are no code
        ("region:٣٣", "2, 4 or 6 digits"),  # nor Arabic-Indic ones
        ("region:3306\n", "2, 4 or 6 digits"),
        ("enterprise:", "enterprise id"),
        ("enterprise:-x", "enterprise id"),
        ("enterprise:a b", "enterprise id"),
        ("enterprise:x'; DROP MEASUREMENT enterprise_daily", "enterprise id"),
        ("enterprise:" + "x" * 65, "enterprise id"),
        ("enterprise:x\n", "enterprise id"),
    ],
)
def test_parse_scope_rejects_with_a_clear_message(text: str, fragment: str) -> None:
    with pytest.raises(ScopeError, match=fragment) as e:
        parse_scope(text)
    assert "province" in str(e.value) or "digits" in str(e.value) or "id" in str(e.value)


# --- the access rules, exhaustively -----------------------------------------------------------------------------

KEYS = [
    KeyScope("province"),
    KeyScope("region", region="33"),
    KeyScope("region", region="3306"),
    KeyScope("region", region="330602"),
    KeyScope("enterprise", enterprise="E1"),
]
REGION_FILTERS = [None, "33", "32", "3306", "3301", "330602", "330603", "320500"]
ENTERPRISES = {"E1": "330602", "E2": "330602", "E3": "330603", "E4": "330102", "E5": "320500", "ghost": None}


def expected_level(key: KeyScope, level: str, region: str | None) -> str:
    """The rule written out plainly: 'ok', 'forbidden' (403) or 'bad' (422)."""
    if key.kind == "region" and region is not None and not region.startswith(key.region or ""):
        return "forbidden"
    if key.kind == "enterprise":
        return "ok" if level == "enterprise" else "forbidden"
    if level in DIGITS and key.kind == "region" and DIGITS[level] < len(key.region or ""):
        return "forbidden"
    if level in DIGITS and region is not None and DIGITS[level] < len(region):
        return "bad"
    return "ok"


@pytest.mark.parametrize(("key", "level", "region"), list(itertools.product(KEYS, LEVELS, REGION_FILTERS)))
def test_level_rules(key: KeyScope, level: str, region: str | None) -> None:
    expected = expected_level(key, level, region)
    try:
        key.level_allowed(level, region)
        got = "ok"
    except AccessDenied:
        got = "forbidden"
    except BadCombination:
        got = "bad"
    assert got == expected
    if got != "ok":
        return
    # what the request reads never reaches outside the key's scope
    prefix, industries, ids = key.scope_parts(region, None, None)
    scope = Scope(prefix, industries, ids)
    for ent, ent_region in ENTERPRISES.items():
        if ent_region is None:
            continue
        admitted = scope.admits(ent, ent_region, "17")
        if key.kind == "region":
            assert not admitted or ent_region.startswith(key.region or "")
        if key.kind == "enterprise":
            assert admitted == (ent == key.enterprise and (region is None or ent_region.startswith(region)))
        if region is not None:
            assert not admitted or ent_region.startswith(region)
    # a region key's group rows and its industry rows (pooled within `prefix`) lie inside its region
    if key.kind == "region" and level in DIGITS:
        for ent_region in ("330602", "330603", "330102", "320500"):
            code = ent_region[: DIGITS[level]]
            if scope.admits("x", ent_region, "17"):
                assert code.startswith(key.region or "")
                assert key.row_visible(level, code, None)
    if key.kind == "region" and level == "industry":
        assert prefix is not None and prefix.startswith(key.region or "")


@pytest.mark.parametrize(("key", "enterprise"), list(itertools.product(KEYS, ENTERPRISES)))
def test_enterprise_access_never_reveals_existence_outside_the_scope(key: KeyScope, enterprise: str) -> None:
    region = ENTERPRISES[enterprise]
    decision = key.enterprise_access(enterprise, region)
    if key.kind == "province":
        assert decision == ("ok" if region else "not_found")
    elif key.kind == "enterprise":
        assert decision == ("ok" if enterprise == key.enterprise else "forbidden")
    else:
        inside = region is not None and region.startswith(key.region or "")
        assert decision == ("ok" if inside else "forbidden")
        if not inside:  # the same answer whether it exists or not
            assert key.enterprise_access(enterprise, None) == decision


@pytest.mark.parametrize("key", KEYS)
def test_filters_narrow_never_widen(key: KeyScope) -> None:
    for ent in ("E1", "E2", None):
        if key.kind == "enterprise" and ent not in (None, key.enterprise):
            with pytest.raises(AccessDenied):
                key.scope_parts(None, None, ent)
            continue
        prefix, industries, ids = key.scope_parts(None, "17", ent)
        assert industries == ("17",)
        if key.kind == "enterprise":
            assert ids == (key.enterprise,)
        else:
            assert ids == ((ent,) if ent else ())
            assert prefix == key.region


def test_row_visibility() -> None:
    assert KeyScope("province").row_visible("province", "32", None)
    region = KeyScope("region", region="3306")
    assert region.row_visible("county", "330602", None) and not region.row_visible("county", "330102", None)
    assert not region.row_visible("province", "33", None)
    ent = KeyScope("enterprise", enterprise="E1")
    assert ent.row_visible("enterprise", "330602", "E1")
    assert not ent.row_visible("enterprise", "330602", "E2") and not ent.row_visible("county", "330602", None)


def test_keyscope_refuses_inconsistent_forms() -> None:
    for kwargs in ({"kind": "province", "region": "33"}, {"kind": "region"}, {"kind": "region", "region": "3"},
                   {"kind": "enterprise"}, {"kind": "enterprise", "enterprise": "a b"}):
        with pytest.raises(ScopeError):
            KeyScope(**kwargs)  # type: ignore[arg-type]


# --- fmc keys ---------------------------------------------------------------------------------------------------


def run(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="fmc")
    keys_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = keys_cli.keys_main(args, out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def central(tmp_path: Path) -> Path:
    path = tmp_path / "central.toml"
    path.write_text('[store]\ntype = "embedded"\npath = "store.db"\n[api]\nkeys_file = "secret/keys.db"\n',
                    encoding="utf-8")
    return path


def test_cli_create_list_revoke(central: Path) -> None:
    code, out, err = run(["keys", "create", "-c", str(central), "--scope", "region:3306", "--name", "绍兴"])
    assert code == 0
    key = out.strip().splitlines()[-1]
    assert key.startswith("fmc_") and "cannot be shown again" in err
    key_id = key.split("_")[1]
    code, out, _ = run(["keys", "list", "-c", str(central)])
    assert code == 0 and key_id in out and "region:3306" in out and "active" in out and "绍兴" in out
    assert key not in out and key.split("_", 2)[2] not in out
    keys_file = central.parent / "secret" / "keys.db"  # relative to the config file
    with KeyStore(keys_file) as store:
        assert store.authenticate(key) == KeyScope("region", region="3306")
    assert run(["keys", "revoke", "-c", str(central), key_id])[0] == 0
    code, out, _ = run(["keys", "list", "-c", str(central)])
    assert "revoked" in out
    with KeyStore(keys_file) as store:
        assert store.authenticate(key) is None


def test_cli_errors_have_exit_codes_and_messages(central: Path, tmp_path: Path) -> None:
    code, out, err = run(["keys", "create", "-c", str(central), "--scope", "region:336"])
    assert code == 2 and "2, 4 or 6 digits" in err and out == ""
    code, _, err = run(["keys", "create", "-c", str(central), "--scope", "city:3306"])
    assert code == 2 and "province, region:" in err
    code, _, err = run(["keys", "revoke", "-c", str(central), "0123456789ab"])
    assert code == 2 and "no key with id" in err and "fmc keys list" in err
    code, _, err = run(["keys", "list", "-c", str(tmp_path / "nope.toml")])
    assert code == 2 and "nope.toml" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('[store]\ntype = "embedded"\n[api]\nkeys_file = "other.db"\n', encoding="utf-8")
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE x (y)")
    code, _, err = run(["keys", "list", "-c", str(bad)])
    assert code == 1 and "not an fmc keys file" in err
    code, out, _ = run(["keys", "list", "-c", str(central)])
    assert code == 0 and "no keys" in out


def test_cli_needs_an_action(central: Path) -> None:
    with pytest.raises(SystemExit) as e:
        run(["keys"])
    assert e.value.code == 2
