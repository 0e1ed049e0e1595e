"""``fmc grafana push``: the InfluxDB datasource, folders and dashboards into a Grafana, idempotently.

Talks to Grafana's HTTP API through grafana-client (imported only when pushing, so ``fmc`` starts
fast). Everything is addressed by uid: the datasource ``fmc-influxdb``, each folder, each
dashboard. A second push with the same input writes nothing and says so; ``dry_run`` reads what
is there and reports what would be created or updated without writing. Reference:
``fmc/central/grafana/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from fmc.core.config import ConfigError

DATASOURCE_UID = "fmc-influxdb"
DATASOURCE_NAME = "fmc InfluxDB"
DEFAULT_TIMEOUT_S = 10.0
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Grafana's own limit for uids is 40 characters; restricting the alphabet also keeps a uid from
# changing the API path it is put into (grafana-client formats uids into paths unescaped).
_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
# What makes the datasource the one the dashboards query (InfluxDB, InfluxQL, through Grafana's proxy):
# push keeps these as it creates them.
_FIXED_TOP_KEYS = ("name", "type", "access")
_FIXED_JSON_KEYS = ("version",)
# The settings a user gives (flags, environment) -> the datasource keys and jsonData keys each decides.
# Of an existing datasource push changes only the settings it was given: a default (the URL
# http://localhost:8086, the database fmc, no credentials) fills in a datasource it creates and never
# replaces what a working one has. Everything else (isDefault, basicAuth, jsonData a user set, ...)
# is left as Grafana has it.
DATASOURCE_SETTINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "url": (("url",), ()),
    "database": (("database",), ("dbName",)),
    "credentials": (("user",), ("httpHeaderName1",)),  # and the secrets of secureJsonData
    "http_mode": ((), ("httpMode",)),
}
# What Grafana answers about a datasource but takes no update of: a view of the secrets and the
# legacy plain-text password fields (secrets go in secureJsonData only).
_NOT_SENT_BACK = ("secureJsonFields", "password", "basicAuthPassword")
# The message push saves a dashboard with: a later version with another message was saved in Grafana.
PUSH_MESSAGE = "fmc grafana push"

Kind = Literal["datasource", "folder", "dashboard"]
Action = Literal["create", "update", "unchanged", "skip"]


class DashboardLike(Protocol):
    """What ``fmc.central.grafana.dashboards.Dashboard`` provides."""

    uid: str
    title: str
    folder_uid: str
    folder_title: str
    model: dict[str, Any]


class PushError(Exception):
    """Pushing failed; the message says what Grafana answered and what to do. Exit code 1."""


class PushUsageError(PushError):
    """Bad input (a uid Grafana cannot take, a missing token, …): exit code 2."""


@dataclass(frozen=True)
class Change:
    kind: Kind
    uid: str
    title: str
    action: Action
    detail: str = ""


@dataclass
class PushReport:
    url: str
    dry_run: bool
    changes: list[Change] = field(default_factory=list)

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action == action)

    @property
    def changed(self) -> bool:
        return any(c.action in ("create", "update") for c in self.changes)

    def render(self) -> str:
        head = f"Grafana {self.url}" + (" (dry run: nothing written)" if self.dry_run else "")
        lines = [head]
        if self.changes:
            w_uid = max(len(c.uid) for c in self.changes)
            titles = [_printable(c.title) for c in self.changes]
            w_title = max(_display_width(t) for t in titles)
            for c, title in zip(self.changes, titles, strict=True):
                verb = _VERB_DRY[c.action] if self.dry_run else _VERB[c.action]
                pad = " " * (w_title - _display_width(title))
                lines.append(f"  {c.kind:<10}  {c.uid:<{w_uid}}  {title}{pad}  {verb}"
                             + (f" ({c.detail})" if c.detail else ""))
        created, updated = self.count("create"), self.count("update")
        unchanged, skipped = self.count("unchanged"), self.count("skip")
        if not self.changed:
            lines.append(f"nothing to change: {unchanged} up to date" + (f", {skipped} skipped" if skipped else ""))
        else:
            would = "would be " if self.dry_run else ""
            lines.append(f"{created} {would}created, {updated} {would}updated, {unchanged} unchanged"
                         + (f", {skipped} skipped" if skipped else ""))
        return "\n".join(lines)


_VERB = {"create": "created", "update": "updated", "unchanged": "unchanged", "skip": "skipped"}
_VERB_DRY = {"create": "would create", "update": "would update", "unchanged": "unchanged", "skip": "would skip"}


def _printable(s: str) -> str:
    # a title is the dashboards' data: a newline or an escape sequence in it must not break the report
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)


def _display_width(s: str) -> int:
    # CJK titles take two terminal columns per character; align the report for both languages
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in s)


# --- the desired datasource --------------------------------------------------------------------------------


def influx_datasource(
    url: str,
    database: str,
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    uid: str = DATASOURCE_UID,
    name: str = DATASOURCE_NAME,
    http_mode: Literal["GET", "POST"] = "GET",
) -> dict[str, Any]:
    """Grafana's JSON for an InfluxDB datasource queried with InfluxQL.

    InfluxDB 1.x: ``user`` + ``password`` (or none). InfluxDB 2.x/3.x through the v1 compatibility
    API: ``token``, sent as ``Authorization: Token …`` (Grafana's documented way for InfluxQL on
    2.x); the database must then be mapped to a bucket (DBRP).
    """
    problems = []
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"--influx-url {url!r} is not an http(s) URL such as http://influxdb:8086")
    if not database.strip():
        problems.append("--influx-database is empty; name the InfluxDB database (default fmc)")
    if token and (user or password):
        problems.append("give either an InfluxDB token (2.x/3.x) or a user and password (1.x), not both")
    if password and not user:
        problems.append("an InfluxDB password without a user: pass --influx-user")
    if not _UID.match(uid):
        problems.append(f"datasource uid {uid!r}: use 1-40 letters, digits, '-' or '_'")
    if problems:
        raise PushUsageError("; ".join(problems))
    json_data: dict[str, Any] = {"version": "InfluxQL", "dbName": database, "httpMode": http_mode}
    secure: dict[str, str] = {}
    if token:
        json_data["httpHeaderName1"] = "Authorization"
        secure["httpHeaderValue1"] = f"Token {token}"
    if password:
        secure["password"] = password
    ds: dict[str, Any] = {
        "uid": uid,
        "name": name,
        "type": "influxdb",
        "access": "proxy",
        "url": url,
        "database": database,  # the pre-10 field; newer Grafana reads jsonData.dbName
        "user": user or "",
        "basicAuth": False,
        "jsonData": json_data,
    }
    if secure:
        ds["secureJsonData"] = secure
    return ds


# --- push --------------------------------------------------------------------------------------------------


def push(
    url: str,
    token: str,
    dashboards: Sequence[DashboardLike],
    datasource: dict[str, Any],
    *,
    dry_run: bool,
    update_secrets: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    datasource_settings: Collection[str] | None = None,
) -> PushReport:
    """Make Grafana at ``url`` hold ``datasource``, the dashboards' folders and ``dashboards``.

    Creates what is missing, updates what differs (a dashboard: its JSON ignoring ``id`` and
    ``version``, or its folder), leaves the rest alone. Of an existing datasource only the
    ``datasource_settings`` (names of ``DATASOURCE_SETTINGS``; None: all of them) are changed, in what
    Grafana has: the settings a caller filled in with defaults stay as they are there. Secrets cannot
    be read back: they are sent when the datasource is created or updated, when Grafana has none, or
    with ``update_secrets``. Raises PushUsageError for bad input (before any request) and PushError
    for what Grafana or the network answered.
    """
    base = _api_base(url)
    if not token:
        raise PushUsageError("no Grafana token: pass --token or set the variable named by --token-env")
    settings = frozenset(DATASOURCE_SETTINGS if datasource_settings is None else datasource_settings)
    if unknown := settings - DATASOURCE_SETTINGS.keys():
        raise PushUsageError(f"unknown datasource settings {sorted(unknown)}: use {', '.join(DATASOURCE_SETTINGS)}")
    folders = _check_input(dashboards, datasource)
    report = PushReport(url=base, dry_run=dry_run)
    api = _Api(base, token, timeout)
    try:
        report.changes.append(_ensure_datasource(api, datasource, settings, dry_run=dry_run,
                                                 update_secrets=update_secrets))
        for uid, title in folders.items():
            report.changes.append(_ensure_folder(api, uid, title, dry_run=dry_run))
        for d in dashboards:
            report.changes.append(_ensure_dashboard(api, d, dry_run=dry_run))
    finally:
        api.close()
    return report


def _api_base(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PushUsageError(f"--url {url!r} is not Grafana's address; write it like http://grafana.example:3000")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise PushUsageError(f"--url {url!r} has a port that is not a number") from None
    # grafana-client appends "api" to the path as given: a sub-path needs its trailing slash
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _check_input(dashboards: Sequence[DashboardLike], datasource: dict[str, Any]) -> dict[str, str]:
    problems: list[str] = []
    if not _UID.match(str(datasource.get("uid", ""))):
        problems.append(f"datasource uid {datasource.get('uid')!r}: use 1-40 letters, digits, '-' or '_'")
    folders: dict[str, str] = {}
    seen: set[str] = set()
    for d in dashboards:
        if not _UID.match(d.uid):
            problems.append(f"dashboard uid {d.uid!r} ({d.title!r}): use 1-40 letters, digits, '-' or '_'")
        elif d.uid in seen:
            problems.append(f"dashboard uid {d.uid!r} appears twice (is it the same in both languages?)")
        seen.add(d.uid)
        if not _UID.match(d.folder_uid) or d.folder_uid == "general":
            problems.append(f"folder uid {d.folder_uid!r} of dashboard {d.uid!r}: use 1-40 letters, digits, "
                            "'-' or '_' (not 'general', Grafana's root)")
        elif folders.setdefault(d.folder_uid, d.folder_title) != d.folder_title:
            problems.append(f"folder uid {d.folder_uid!r} has two titles: {folders[d.folder_uid]!r} and "
                            f"{d.folder_title!r}")
        if not d.title.strip() or not d.folder_title.strip():
            problems.append(f"dashboard {d.uid!r}: empty title or folder title")
        if not isinstance(d.model, dict):
            problems.append(f"dashboard {d.uid!r}: the model is not a JSON object")
    if problems:
        raise PushUsageError("; ".join(problems))
    return folders


def _ensure_datasource(
    api: _Api, want: dict[str, Any], settings: frozenset[str], *, dry_run: bool, update_secrets: bool
) -> Change:
    uid, name = want["uid"], want.get("name", want["uid"])
    have = api.get(f"/datasources/uid/{uid}", f"reading datasource {uid}")
    if have is None:
        if not dry_run:
            api.write("POST", "/datasources", want, f"creating datasource {uid} ({name!r})")
        return Change("datasource", uid, name, "create")
    top_keys, json_keys = _managed_keys(settings)
    diff = _datasource_diff(have, want, top_keys, json_keys, secrets="credentials" in settings,
                            update_secrets=update_secrets)
    if not diff:
        return Change("datasource", uid, name, "unchanged")
    if have.get("readOnly"):
        # a datasource provisioned from a file cannot be changed over the API (Grafana answers 400)
        return Change("datasource", uid, name, "skip",
                      f"provisioned from a file, differs in {', '.join(diff)}: change the provisioning file")
    # Grafana's update replaces the whole datasource (what a PUT leaves out is reset: isDefault,
    # withCredentials, basicAuth, ...): send back what it has, the managed keys changed. Its
    # version goes back too, so an edit made since the read is refused rather than undone.
    body = {k: v for k, v in have.items() if k not in _NOT_SENT_BACK}
    body.update({k: want[k] for k in top_keys if k in want})
    json_data = dict(have.get("jsonData") or {})
    for k in json_keys:
        if k in (want.get("jsonData") or {}):
            json_data[k] = want["jsonData"][k]
        else:
            json_data.pop(k, None)  # e.g. the token's header, after switching to a 1.x user
    body["jsonData"] = json_data
    if "credentials" in settings and want.get("secureJsonData"):
        body["secureJsonData"] = want["secureJsonData"]
    if not dry_run:
        api.write("PUT", f"/datasources/uid/{uid}", body, f"updating datasource {uid} ({name!r})")
    return Change("datasource", uid, name, "update", "differs in " + ", ".join(diff))


def _managed_keys(settings: frozenset[str]) -> tuple[list[str], list[str]]:
    """The datasource's top-level and jsonData keys that push keeps as it wants them."""
    top, json_keys = list(_FIXED_TOP_KEYS), list(_FIXED_JSON_KEYS)
    for name, (setting_top, setting_json) in DATASOURCE_SETTINGS.items():
        if name in settings:
            top += setting_top
            json_keys += setting_json
    return top, json_keys


def _datasource_diff(have: dict[str, Any], want: dict[str, Any], top_keys: Sequence[str], json_keys: Sequence[str],
                     *, secrets: bool, update_secrets: bool) -> list[str]:
    diff = [k for k in top_keys if k in want and have.get(k) != want[k]]
    hj, wj = have.get("jsonData") or {}, want.get("jsonData") or {}
    diff += [f"jsonData.{k}" for k in json_keys if hj.get(k) != wj.get(k)]
    stored = have.get("secureJsonFields") or {}
    for k in (want.get("secureJsonData") or {}) if secrets else ():
        if update_secrets or not stored.get(k):
            diff.append(f"secret {k}")
    return diff


def _ensure_folder(api: _Api, uid: str, title: str, *, dry_run: bool) -> Change:
    have = api.get(f"/folders/{uid}", f"reading folder {uid}")
    if have is None:
        if not dry_run:
            api.write("POST", "/folders", {"uid": uid, "title": title}, f"creating folder {uid} ({title!r})")
        return Change("folder", uid, title, "create")
    if have.get("title") == title:
        return Change("folder", uid, title, "unchanged")
    if not dry_run:
        api.write("PUT", f"/folders/{uid}", {"title": title, "overwrite": True}, f"renaming folder {uid}")
    return Change("folder", uid, title, "update", f"title was {have.get('title')!r}")


def _wanted_model(d: DashboardLike) -> dict[str, Any]:
    model = dict(d.model)
    model.pop("version", None)
    model["id"] = None  # Grafana finds the dashboard by uid; a stale numeric id would be refused
    model["uid"] = d.uid
    model["title"] = d.title
    return model


def _comparable(model: dict[str, Any]) -> str:
    # the fields Grafana sets itself on save; everything else must be equal to skip the write
    return json.dumps({k: v for k, v in model.items() if k not in ("id", "version")}, sort_keys=True)


def _ensure_dashboard(api: _Api, d: DashboardLike, *, dry_run: bool) -> Change:
    have = api.get(f"/dashboards/uid/{d.uid}", f"reading dashboard {d.uid}")
    want = _wanted_model(d)
    what = f"saving dashboard {d.uid} ({d.title!r})"
    body = {"dashboard": want, "folderUid": d.folder_uid, "overwrite": True, "message": PUSH_MESSAGE}
    if have is None:
        if not dry_run:
            api.write("POST", "/dashboards/db", body, what)
        return Change("dashboard", d.uid, d.title, "create")
    meta = have.get("meta") or {}
    reasons = []
    content_changed = _comparable(have.get("dashboard") or {}) != _comparable(want)
    if content_changed:
        reasons.append("content changed")
    if meta.get("folderUid", "") != d.folder_uid:
        reasons.append(f"moved from folder {meta.get('folderUid') or 'root'!r}")
    if not reasons:
        return Change("dashboard", d.uid, d.title, "unchanged")
    if meta.get("provisioned"):
        return Change("dashboard", d.uid, d.title, "skip",
                      "provisioned from a file: update the JSON file Grafana reads instead")
    if content_changed and (edited := _edited_in_grafana(api, d.uid)):
        # the files are the dashboards' source: the edit is overwritten (it stays in Grafana's version history)
        reasons[0] = f"replaces {edited}"
    if not dry_run:
        api.write("POST", "/dashboards/db", body, what)
    return Change("dashboard", d.uid, d.title, "update", ", ".join(reasons))


def _edited_in_grafana(api: _Api, uid: str) -> str | None:
    """``version N, saved in Grafana by WHO, not by fmc grafana push`` when the dashboard's latest
    version is not one push saved (its message is another); None when it is, or Grafana keeps no history."""
    answer = api.get_json(f"/dashboards/uid/{uid}/versions", f"reading the versions of dashboard {uid}",
                          params={"limit": 1})
    # Grafana 12 answers {"versions": [...], "continueToken": ...}, earlier versions the list itself
    versions = answer.get("versions") if isinstance(answer, dict) else answer
    if not isinstance(versions, list):
        return None
    latest = max((v for v in versions if isinstance(v, dict) and isinstance(v.get("version"), int)),
                 key=lambda v: v["version"], default=None)
    if latest is None or latest.get("message") == PUSH_MESSAGE:
        return None
    by = f" by {_printable(str(latest['createdBy']))}" if latest.get("createdBy") else ""
    return f"version {latest['version']}, saved in Grafana{by}, not by {PUSH_MESSAGE}"


# --- the HTTP edge: grafana-client, its errors turned into sentences ---------------------------------------


class _Api:
    def __init__(self, base: str, token: str, timeout: float) -> None:
        from grafana_client import GrafanaApi

        self.base = base
        self.timeout = timeout
        self._grafana = GrafanaApi.from_url(base, credential=token, timeout=timeout)
        self._client = self._grafana.client

    def close(self) -> None:
        self._client.s.close()

    def get(self, path: str, what: str) -> dict[str, Any] | None:
        """The JSON object at ``path``, or None when Grafana answers 404."""
        result = self.get_json(path, what)
        if result is not None and not isinstance(result, dict):
            raise self._not_grafana(what)
        return result

    def get_json(self, path: str, what: str, params: dict[str, Any] | None = None) -> Any:
        """The JSON at ``path`` (an object or a list), or None when Grafana answers 404."""
        return self._call(lambda: self._client.GET(path, params=params), what, none_on_404=True)

    def write(self, method: Literal["POST", "PUT"], path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        call = self._client.POST if method == "POST" else self._client.PUT
        result = self._call(lambda: call(path, json=body), what, none_on_404=False)
        if not isinstance(result, dict):
            raise self._not_grafana(what)
        return result

    def _not_grafana(self, what: str) -> PushError:
        return PushError(f"the answer from {self.base} while {what} is not Grafana's JSON API; "
                         "is --url Grafana's root address (without /api)?")

    def _call(self, request: Callable[[], Any], what: str, *, none_on_404: bool) -> Any:
        """The parsed JSON of the answer (None for a 404 when ``none_on_404``); Grafana's and the
        network's errors as PushError."""
        import niquests.exceptions
        from grafana_client.client import (
            GrafanaClientError,
            GrafanaException,
            GrafanaServerError,
            GrafanaTimeoutError,
            GrafanaUnauthorizedError,
        )

        where = f"Grafana at {self.base}"
        try:
            result = request()
        except GrafanaUnauthorizedError:
            raise PushError(
                f"{where} refused the token (401 Unauthorized) while {what}: check --token / --token-env; "
                "use a service account token of this Grafana (Administration → Service accounts)"
            ) from None
        except GrafanaClientError as e:
            if e.status_code == 404 and none_on_404:
                return None
            msg = _grafana_message(e.response)
            if e.status_code == 403:
                raise PushError(
                    f"{where} denied {what} (403 Forbidden: {msg}): the token's service account needs the Admin "
                    "role (datasources and folders) or at least Editor (dashboards)"
                ) from None
            if e.status_code == 409:
                raise PushError(
                    f"{where} refused {what} (409 Conflict: {msg}): something with the same name but another uid "
                    "exists; rename or delete it in Grafana, then push again"
                ) from None
            raise PushError(f"{where} refused {what} ({e.status_code}: {msg})") from None
        except GrafanaServerError as e:
            raise PushError(f"{where} failed while {what} ({e.status_code}: {_grafana_message(e.response)}); "
                            "see Grafana's log") from None
        except GrafanaTimeoutError:
            raise PushError(f"{where} did not answer within {self.timeout:g}s while {what}") from None
        except GrafanaException as e:
            raise PushError(f"cannot talk to {where} while {what}: {_short(str(e))}") from None
        except niquests.exceptions.ConnectionError as e:
            raise PushError(f"cannot connect to {where}: {_connection_reason(str(e))}; is Grafana running and "
                            "is --url right?") from None
        except niquests.exceptions.RequestException as e:
            raise PushError(f"cannot talk to {where} while {what}: {_short(str(e))}") from None
        except ValueError:  # a 2xx answer that is not JSON: not Grafana's API at that URL
            raise self._not_grafana(what) from None
        return result


def _grafana_message(response: Any) -> str:
    if isinstance(response, dict) and response.get("message"):
        return _short(str(response["message"]))
    return _short(str(response)) if response else "no message"


def _connection_reason(text: str) -> str:
    low = text.lower()
    if "refused" in low:
        return "connection refused"
    if "name or service not known" in low or "nodename nor servname" in low or "resolve" in low:
        return "the host name does not resolve"
    if "certificate" in low or "ssl" in low or "tls" in low:
        return "TLS failed (" + _short(text) + ")"
    if "timed out" in low or "timeout" in low:
        return "the connection timed out"
    return _short(text)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- CLI -----------------------------------------------------------------------------------------------------


def add_parser(subparsers: Any, *, central_timezone: Callable[[str], str]) -> None:
    """Add ``grafana push`` to the ``fmc`` command's subparsers.

    ``central_timezone`` reads the time zone of the plan a ``central.toml`` names (``-c``), raising
    ConfigError: the composition root gives it, since only it knows the store plugins the file is
    validated with."""
    grafana = subparsers.add_parser("grafana", help="Grafana: push the dashboards, their folders and the datasource")
    actions = grafana.add_subparsers(dest="grafana_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "push",
        help="create or update the InfluxDB datasource, folders and dashboards (idempotent)",
        description="Create or update, by uid, the InfluxDB datasource (fmc-influxdb, InfluxQL), the folders and "
        "the fmc dashboards in a Grafana. A second push changes nothing. Secrets come from the environment.",
    )
    p.add_argument("--url", required=True, help="Grafana's address, e.g. http://grafana.example:3000")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token", default=None,
                     help="service account token (visible to other users in the process list: prefer --token-env)")
    tok.add_argument("--token-env", default="GRAFANA_TOKEN", metavar="VAR",
                     help="environment variable holding the token (default GRAFANA_TOKEN)")
    p.add_argument("--influx-url", default=None,
                   help="InfluxDB as Grafana's server reaches it (default $INFLUX_URL or http://localhost:8086)")
    p.add_argument("--influx-database", default=None,
                   help="InfluxQL database; on 2.x/3.x the name mapped to the bucket (default $INFLUX_DATABASE or fmc)")
    p.add_argument("--influx-token-env", default=None, metavar="VAR",
                   help="variable holding an InfluxDB 2.x/3.x token (default INFLUX_TOKEN, used when set)")
    p.add_argument("--influx-user", default=None, help="InfluxDB 1.x user (its password from --influx-password-env)")
    p.add_argument("--influx-password-env", default="INFLUX_PASSWORD", metavar="VAR",
                   help="variable holding the InfluxDB 1.x password (default INFLUX_PASSWORD)")
    p.add_argument("-c", "--config", default=None, metavar="CENTRAL_TOML",
                   help="central TOML file: its plan's time zone cuts the dashboards' days (default Asia/Shanghai)")
    p.add_argument("--lang", choices=("zh", "en", "both"), default="zh", help="dashboard language (default zh)")
    p.add_argument("--update-secrets", action="store_true",
                   help="send the InfluxDB password or token even when Grafana has one (after rotating it)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request (default 10)")
    p.add_argument("--dry-run", action="store_true", help="show what would be created or updated; write nothing")
    p.set_defaults(handler=push_main, central_timezone=central_timezone)


def push_main(args: argparse.Namespace) -> int:
    """``fmc grafana push``: exit 0 pushed (or nothing to do), 1 Grafana failed, 2 bad usage."""
    prog = "fmc grafana push"
    try:
        token = args.token if args.token is not None else os.environ.get(args.token_env, "")
        if not token:
            raise PushUsageError(f"no Grafana token: set {args.token_env} (a service account token) or pass --token")
        datasource, settings = _datasource_from_args(args)
        # a bucket of a day or longer is a local day of the plan's zone, the one the indicators use
        timezone = args.central_timezone(args.config) if args.config is not None else None
        dashboards = _load_dashboards(args.lang, datasource["uid"], timezone)
        report = push(args.url, token, dashboards, datasource, dry_run=args.dry_run,
                      update_secrets=args.update_secrets, timeout=args.timeout, datasource_settings=settings)
    except PushUsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USAGE
    except PushError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    print(report.render())
    return EXIT_OK


def _datasource_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], frozenset[str]]:
    """The datasource to create, and the settings given (flags, environment) that an existing one takes."""
    given_url = args.influx_url or os.environ.get("INFLUX_URL")
    given_database = args.influx_database or os.environ.get("INFLUX_DATABASE")
    url = given_url or "http://localhost:8086"
    database = given_database or "fmc"
    token_var = args.influx_token_env or "INFLUX_TOKEN"
    token = os.environ.get(token_var) or None
    if args.influx_token_env and not token:
        raise PushUsageError(f"--influx-token-env {token_var}: that variable is not set")
    password = None
    if args.influx_user:
        password = os.environ.get(args.influx_password_env) or None
        if password is None:
            raise PushUsageError(f"--influx-user {args.influx_user!r} needs its password in "
                                 f"{args.influx_password_env}, which is not set")
        if token and not args.influx_token_env:
            token = None  # an explicit 1.x user wins over a token that merely happens to be in the environment
    settings = {name for name, given in (("url", given_url), ("database", given_database),
                                         ("credentials", token or args.influx_user)) if given}
    ds = influx_datasource(url, database, user=args.influx_user, password=password, token=token)
    return ds, frozenset(settings)


def _load_dashboards(lang: str, datasource_uid: str, timezone: str | None = None) -> list[DashboardLike]:
    """The dashboards of ``lang`` ("zh", "en" or "both") in ``timezone`` (None: the builders' default)."""
    try:
        from fmc.central.grafana.dashboards import build_dashboards
    except ImportError as e:
        raise PushError(f"the dashboard definitions cannot be loaded ({e}); reinstall fmc") from None
    langs = ["zh", "en"] if lang == "both" else [lang]
    zone = {} if timezone is None else {"timezone": timezone}
    dashboards: list[DashboardLike] = []
    for one in langs:
        try:
            dashboards += build_dashboards(datasource_uid=datasource_uid, lang=one, **zone)
        except ValueError as e:  # a zone no IANA name (the plan's is checked when it is loaded)
            raise PushUsageError(str(e)) from None
    return dashboards
