"""``fmc grafana push`` against a local Grafana HTTP API double.

Grafana itself cannot run here (docs/design.md §6), so ``FakeGrafana`` implements the endpoints
the push uses the way Grafana's HTTP API documents them (folders, datasources by uid,
dashboards/db, dashboards/uid) on a free loopback port, keeps state, and records every request
that a real Grafana would not accept (wrong method or path, missing or wrong bearer token, a body
of the wrong shape) as a violation. Each test asserts there were none.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fmc.central.grafana import push as grafana
from fmc.central.grafana.push import (
    DATASOURCE_UID,
    PushError,
    PushUsageError,
    add_parser,
    influx_datasource,
    push,
)

TOKEN = "glsa_test-token_0123456789"
UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


# --- the Grafana double ------------------------------------------------------------------------------------


@dataclass
class Dash:
    uid: str
    title: str
    folder_uid: str
    folder_title: str
    model: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeGrafana:
    token: str = TOKEN
    prefix: str = ""  # Grafana served under a sub-path, e.g. "/grafana"
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    inject: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)  # (method, path regex) -> answer
    next_id: int = 1
    url: str = ""

    def writes(self) -> list[tuple[str, str, Any]]:
        return [r for r in self.requests if r[0] != "GET"]

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    # one request: (status, JSON body)
    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                self.violations.append(f"{method} {path}: body is not JSON")
                return 400, {"message": "bad request data"}
        self.requests.append((method, path, body))
        if headers.get("authorization") != f"Bearer {self.token}":
            if headers.get("authorization", "").startswith("Bearer "):
                return 401, {"message": "Invalid API key", "traceID": ""}
            self.violations.append(f"{method} {path}: no bearer token")
            return 401, {"message": "Unauthorized"}
        if method in ("POST", "PUT"):
            if not headers.get("content-type", "").startswith("application/json"):
                self.violations.append(f"{method} {path}: Content-Type is {headers.get('content-type')!r}")
            if not isinstance(body, dict):
                self.violations.append(f"{method} {path}: body is not a JSON object")
                return 400, {"message": "bad request data"}
        elif raw:
            self.violations.append(f"{method} {path}: a GET with a body")
        if not path.startswith(self.prefix + "/api/"):
            self.violations.append(f"{method} {path}: not under {self.prefix}/api/")
            return 404, {"message": "Not found"}
        route = path[len(self.prefix) + len("/api"):]
        for (m, pattern), answer in self.inject.items():
            if m == method and re.fullmatch(pattern, route):
                return answer
        for m, pattern, fn in self.ROUTES:
            match = re.fullmatch(pattern, route)
            if m == method and match:
                return fn(self, body, *match.groups())
        self.violations.append(f"{method} {path}: no such endpoint in Grafana's HTTP API")
        return 404, {"message": "Not found"}

    # folders
    def get_folder(self, _body: Any, uid: str) -> tuple[int, Any]:
        f = self.folders.get(uid)
        return (200, f) if f else (404, {"message": "folder not found", "status": "not-found"})

    def create_folder(self, body: dict[str, Any]) -> tuple[int, Any]:
        if set(body) - {"uid", "title", "parentUid", "description"}:
            self.violations.append(f"POST /folders: unknown keys {sorted(set(body) - {'uid', 'title'})}")
        title, uid = body.get("title"), body.get("uid")
        if not isinstance(title, str) or not title.strip():
            self.violations.append("POST /folders: no title")
            return 400, {"message": "folder title cannot be empty"}
        if not isinstance(uid, str) or not UID_RE.match(uid):
            self.violations.append(f"POST /folders: bad uid {uid!r}")
            return 400, {"message": "invalid uid"}
        if uid in self.folders or any(f["title"] == title for f in self.folders.values()):
            return 409, {"message": "a folder with the same name already exists"}
        self.folders[uid] = {"id": self.new_id(), "uid": uid, "title": title, "url": f"/dashboards/f/{uid}/",
                             "version": 1, "canSave": True}
        return 200, self.folders[uid]

    def update_folder(self, body: dict[str, Any], uid: str) -> tuple[int, Any]:
        f = self.folders.get(uid)
        if f is None:
            return 404, {"message": "folder not found"}
        if not isinstance(body.get("title"), str) or not body["title"].strip():
            self.violations.append(f"PUT /folders/{uid}: no title")
            return 400, {"message": "folder title cannot be empty"}
        if body.get("overwrite") is not True and body.get("version") != f["version"]:
            return 412, {"message": "The folder has been changed by someone else", "status": "version-mismatch"}
        f.update(title=body["title"], version=f["version"] + 1)
        return 200, f

    # datasources
    def get_datasource(self, _body: Any, uid: str) -> tuple[int, Any]:
        ds = self.datasources.get(uid)
        if ds is None:
            return 404, {"message": "Data source not found"}
        return 200, ds | {"secureJsonFields": {k: True for k in self.secrets.get(uid, {})}}

    def _check_datasource_body(self, where: str, body: dict[str, Any]) -> bool:
        for key in ("name", "type", "access"):
            if not isinstance(body.get(key), str) or not body[key]:
                self.violations.append(f"{where}: {key} missing")
                return False
        if body["access"] not in ("proxy", "direct"):
            self.violations.append(f"{where}: access {body['access']!r}")
        if not isinstance(body.get("jsonData", {}), dict) or not isinstance(body.get("secureJsonData", {}), dict):
            self.violations.append(f"{where}: jsonData/secureJsonData are not objects")
            return False
        if "secureJsonFields" in body or "password" in body:
            self.violations.append(f"{where}: secrets outside secureJsonData")
        return True

    def _stored(self, body: dict[str, Any], ds_id: int, version: int) -> dict[str, Any]:
        ds = {k: v for k, v in body.items() if k != "secureJsonData"}
        return {"id": ds_id, "orgId": 1, "typeLogoUrl": "", "password": "", "basicAuthUser": "",
                "withCredentials": False, "isDefault": False, "readOnly": False,
                "user": "", "database": "", "basicAuth": False, "jsonData": {}} | ds | {"version": version}

    def create_datasource(self, body: dict[str, Any]) -> tuple[int, Any]:
        if not self._check_datasource_body("POST /datasources", body):
            return 400, {"message": "bad request data"}
        if any(d["name"] == body["name"] for d in self.datasources.values()):
            return 409, {"message": "data source with the same name already exists"}
        uid = body.get("uid") or f"gen{self.next_id}"
        if uid in self.datasources:
            return 409, {"message": "data source with the same uid already exists"}
        ds = self._stored(body | {"uid": uid}, self.new_id(), 1)
        self.datasources[uid] = ds
        self.secrets[uid] = dict(body.get("secureJsonData", {}))
        return 200, {"datasource": self.get_datasource(None, uid)[1], "id": ds["id"], "message": "Datasource added",
                     "name": ds["name"]}

    def update_datasource(self, body: dict[str, Any], uid: str) -> tuple[int, Any]:
        old = self.datasources.get(uid)
        if old is None:
            return 404, {"message": "Data source not found"}
        if old["readOnly"]:
            return 400, {"message": "Cannot update read-only data source"}
        if not self._check_datasource_body(f"PUT /datasources/uid/{uid}", body):
            return 400, {"message": "bad request data"}
        if isinstance(body.get("version"), int) and 0 < body["version"] < old["version"]:
            # Grafana refuses an update based on an older version (an edit made since it was read)
            return 409, {"message": "Datasource has already been updated by someone else. Please reload and try again"}
        self.datasources[uid] = self._stored(body | {"uid": uid}, old["id"], old["version"] + 1)
        # Grafana keeps stored secrets that the update does not mention
        self.secrets[uid] = self.secrets.get(uid, {}) | dict(body.get("secureJsonData", {}))
        return 200, {"datasource": self.get_datasource(None, uid)[1], "id": old["id"],
                     "message": "Datasource updated", "name": body["name"]}

    # dashboards
    def get_dashboard(self, _body: Any, uid: str) -> tuple[int, Any]:
        d = self.dashboards.get(uid)
        if d is None:
            return 404, {"message": "Dashboard not found"}
        folder = self.folders.get(d["folderUid"], {})
        meta = {"type": "db", "canSave": True, "slug": "x", "url": f"/d/{uid}/x", "version": d["model"]["version"],
                "folderId": folder.get("id", 0), "folderUid": d["folderUid"], "folderTitle": folder.get("title", ""),
                "provisioned": d.get("provisioned", False)}
        return 200, {"dashboard": copy.deepcopy(d["model"]), "meta": meta}

    def save_dashboard(self, body: dict[str, Any]) -> tuple[int, Any]:
        if set(body) - {"dashboard", "folderUid", "folderId", "overwrite", "message"}:
            self.violations.append(f"POST /dashboards/db: unknown keys {sorted(body)}")
        model = body.get("dashboard")
        if not isinstance(model, dict) or not isinstance(model.get("title"), str) or not model["title"].strip():
            self.violations.append("POST /dashboards/db: no dashboard model with a title")
            return 400, {"message": "Dashboard title cannot be empty", "status": "empty-name"}
        uid = model.get("uid")
        if not isinstance(uid, str) or not UID_RE.match(uid):
            self.violations.append(f"POST /dashboards/db: bad uid {uid!r}")
            return 400, {"message": "uid contains illegal characters"}
        folder_uid = body.get("folderUid", "")
        if folder_uid and folder_uid not in self.folders:
            return 400, {"message": "folder not found"}
        old = self.dashboards.get(uid)
        if old is not None:
            if old.get("provisioned"):
                return 400, {"message": "Cannot save provisioned dashboard"}
            if body.get("overwrite") is not True and model.get("version") != old["model"]["version"]:
                return 412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}
        elif model.get("id") not in (None, 0):
            return 404, {"message": "Dashboard not found"}
        stored = copy.deepcopy(model)
        stored["id"] = old["model"]["id"] if old else self.new_id()
        stored["version"] = old["model"]["version"] + 1 if old else 1
        versions = old["versions"] if old else []
        versions.append({"version": stored["version"], "createdBy": "sa-1-fmc", "message": body.get("message", "")})
        self.dashboards[uid] = {"model": stored, "folderUid": folder_uid, "versions": versions}
        return 200, {"id": stored["id"], "uid": uid, "url": f"/d/{uid}/x", "status": "success",
                     "version": stored["version"], "slug": "x"}

    def dashboard_versions(self, _body: Any, uid: str) -> tuple[int, Any]:
        d = self.dashboards.get(uid)
        if d is None:
            return 404, {"message": "Dashboard not found"}
        # newest first, as Grafana 12 answers (earlier versions: the list itself)
        versions = [{"id": v["version"], "uid": uid, "parentVersion": v["version"] - 1, "restoredFrom": 0,
                     "created": "2026-01-01T00:00:00Z", **v} for v in reversed(d["versions"])]
        return 200, {"continueToken": "", "versions": versions}

    def edit_in_grafana(self, uid: str, by: str, **changes: Any) -> None:
        """Someone saves the dashboard in Grafana's UI (a version without push's message)."""
        d = self.dashboards[uid]
        d["model"].update(changes)
        d["model"]["version"] += 1
        d["versions"].append({"version": d["model"]["version"], "createdBy": by, "message": ""})

    ROUTES = (
        ("GET", r"/folders/([^/]+)", get_folder),
        ("POST", r"/folders", create_folder),
        ("PUT", r"/folders/([^/]+)", update_folder),
        ("GET", r"/datasources/uid/([^/]+)", get_datasource),
        ("POST", r"/datasources", create_datasource),
        ("PUT", r"/datasources/uid/([^/]+)", update_datasource),
        ("GET", r"/dashboards/uid/([^/]+)", get_dashboard),
        ("GET", r"/dashboards/uid/([^/]+)/versions", dashboard_versions),
        ("POST", r"/dashboards/db", save_dashboard),
    )


def _serve(fake: FakeGrafana) -> Iterator[FakeGrafana]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                status, body = fake.handle(self.command, self.path.split("?")[0], headers, raw)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _any

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}{fake.prefix}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeGrafana]:
    f = FakeGrafana()
    yield from _serve(f)
    assert f.violations == [], "requests a real Grafana would not accept"


def _dashboards() -> list[Dash]:
    def model(title: str, query: str) -> dict[str, Any]:
        return {"title": title, "schemaVersion": 39, "tags": ["fmc"], "time": {"from": "now-30d", "to": "now"},
                "panels": [{"id": 1, "type": "timeseries", "title": title,
                            "datasource": {"type": "influxdb", "uid": DATASOURCE_UID},
                            "targets": [{"refId": "A", "rawQuery": True, "query": query}]}]}

    return [
        Dash("fmc-enterprise", "企业概览", "fmc-zh", "fmc 指标", model("企业概览", 'SELECT sum("tce") FROM "x"')),
        Dash("fmc-bureau", "经信局", "fmc-zh", "fmc 指标", model("经信局", 'SELECT mean("value") FROM "indicator"')),
        Dash("fmc-gateway", "Gateways", "fmc-ops", "fmc operations",
             model("Gateways", 'SELECT last("x") FROM "agent"')),
    ]


def _ds(**kw: Any) -> dict[str, Any]:
    return influx_datasource("http://influxdb:8086", "fmc", **kw)


# --- push ----------------------------------------------------------------------------------------------------


def test_first_push_creates_everything_and_a_second_push_changes_nothing(fake: FakeGrafana) -> None:
    dashboards = _dashboards()
    report = push(fake.url, TOKEN, dashboards, _ds(token="influx-secret"), dry_run=False)
    assert [(c.kind, c.uid, c.action) for c in report.changes] == [
        ("datasource", DATASOURCE_UID, "create"), ("folder", "fmc-zh", "create"), ("folder", "fmc-ops", "create"),
        ("dashboard", "fmc-enterprise", "create"), ("dashboard", "fmc-bureau", "create"),
        ("dashboard", "fmc-gateway", "create")]
    assert [(m, p) for m, p, _ in fake.writes()] == [
        ("POST", "/api/datasources"), ("POST", "/api/folders"), ("POST", "/api/folders"),
        ("POST", "/api/dashboards/db"), ("POST", "/api/dashboards/db"), ("POST", "/api/dashboards/db")]
    ds = fake.datasources[DATASOURCE_UID]
    assert (ds["type"], ds["access"], ds["url"], ds["database"]) == ("influxdb", "proxy", "http://influxdb:8086", "fmc")
    assert ds["jsonData"] == {"version": "InfluxQL", "dbName": "fmc", "httpMode": "GET",
                              "httpHeaderName1": "Authorization"}
    assert fake.secrets[DATASOURCE_UID] == {"httpHeaderValue1": "Token influx-secret"}
    assert {u: f["title"] for u, f in fake.folders.items()} == {"fmc-zh": "fmc 指标", "fmc-ops": "fmc operations"}
    for d in dashboards:
        stored = fake.dashboards[d.uid]
        assert stored["folderUid"] == d.folder_uid
        assert stored["model"]["panels"] == d.model["panels"]
        assert stored["model"]["version"] == 1
    body = fake.writes()[3][2]
    assert body["overwrite"] is True and body["folderUid"] == "fmc-zh" and body["dashboard"]["uid"] == "fmc-enterprise"
    assert "version" not in body["dashboard"] and body["dashboard"]["id"] is None
    assert "6 created, 0 updated, 0 unchanged" in report.render()

    n = len(fake.requests)
    again = push(fake.url, TOKEN, dashboards, _ds(token="influx-secret"), dry_run=False)
    assert not again.changed
    assert {c.action for c in again.changes} == {"unchanged"}
    assert [r for r in fake.requests[n:] if r[0] != "GET"] == []  # reads only
    assert "nothing to change: 6 up to date" in again.render()
    assert all(fake.dashboards[d.uid]["model"]["version"] == 1 for d in dashboards)


def test_a_changed_or_moved_dashboard_is_updated_and_only_it(fake: FakeGrafana) -> None:
    dashboards = _dashboards()
    push(fake.url, TOKEN, dashboards, _ds(), dry_run=False)
    changed = copy.deepcopy(dashboards)
    changed[1].model["panels"][0]["targets"][0]["query"] = 'SELECT max("value") FROM "indicator"'
    changed[2] = replace(changed[2], folder_uid="fmc-zh", folder_title="fmc 指标")
    n = len(fake.requests)
    report = push(fake.url, TOKEN, changed, _ds(), dry_run=False)
    assert [(c.uid, c.action, c.detail) for c in report.changes if c.kind == "dashboard"] == [
        ("fmc-enterprise", "unchanged", ""), ("fmc-bureau", "update", "content changed"),
        ("fmc-gateway", "update", "moved from folder 'fmc-ops'")]
    writes = [r for r in fake.requests[n:] if r[0] != "GET"]
    assert [(m, p, b["dashboard"]["uid"]) for m, p, b in writes] == [
        ("POST", "/api/dashboards/db", "fmc-bureau"), ("POST", "/api/dashboards/db", "fmc-gateway")]
    assert fake.dashboards["fmc-bureau"]["model"]["version"] == 2
    assert fake.dashboards["fmc-bureau"]["model"]["panels"][0]["targets"][0]["query"].startswith('SELECT max(')
    assert fake.dashboards["fmc-gateway"]["folderUid"] == "fmc-zh"
    assert fake.dashboards["fmc-enterprise"]["model"]["version"] == 1
    # a renamed folder is renamed in place (same uid)
    renamed = [replace(d, folder_title="fmc 指标 2026") if d.folder_uid == "fmc-zh" else d for d in changed]
    report = push(fake.url, TOKEN, renamed, _ds(), dry_run=False)
    assert [(c.uid, c.action) for c in report.changes if c.kind == "folder"] == [("fmc-zh", "update")]
    assert fake.folders["fmc-zh"]["title"] == "fmc 指标 2026"
    assert not push(fake.url, TOKEN, renamed, _ds(), dry_run=False).changed


def test_dry_run_writes_nothing_and_says_what_it_would_do(fake: FakeGrafana) -> None:
    dashboards = _dashboards()
    report = push(fake.url, TOKEN, dashboards, _ds(), dry_run=True)
    assert fake.writes() == [] and fake.requests  # it did read
    assert (fake.folders, fake.datasources, fake.dashboards) == ({}, {}, {})
    text = report.render()
    assert "dry run: nothing written" in text and "would create" in text and "6 would be created" in text

    push(fake.url, TOKEN, dashboards, _ds(), dry_run=False)
    before = copy.deepcopy((fake.folders, fake.datasources, fake.dashboards))
    changed = copy.deepcopy(dashboards)
    changed[0].model["refresh"] = "5m"
    n = len(fake.requests)
    report = push(fake.url, TOKEN, changed, _ds(user="grafana", password="pw"), dry_run=True)
    assert [r for r in fake.requests[n:] if r[0] != "GET"] == []
    assert (fake.folders, fake.datasources, fake.dashboards) == before
    assert [(c.uid, c.action) for c in report.changes if c.action != "unchanged"] == [
        (DATASOURCE_UID, "update"), ("fmc-enterprise", "update")]
    assert "would update" in report.render()


def test_datasource_update_keeps_user_settings_and_sends_secrets_only_when_needed(fake: FakeGrafana) -> None:
    push(fake.url, TOKEN, [], _ds(user="grafana", password="pw1"), dry_run=False)
    assert fake.secrets[DATASOURCE_UID] == {"password": "pw1"}
    fake.datasources[DATASOURCE_UID]["jsonData"]["timeInterval"] = "15m"  # set by someone in Grafana's UI
    # same settings: nothing sent, not even the password Grafana cannot show back
    assert not push(fake.url, TOKEN, [], _ds(user="grafana", password="pw1"), dry_run=False).changed
    # a rotated password is sent only when asked for
    report = push(fake.url, TOKEN, [], _ds(user="grafana", password="pw2"), dry_run=False, update_secrets=True)
    assert report.changes[0].action == "update" and "secret password" in report.changes[0].detail
    assert fake.secrets[DATASOURCE_UID] == {"password": "pw2"}
    # another InfluxDB: updated in place, the user's jsonData kept
    moved = influx_datasource("http://influx-2:8086", "fmc_city", user="grafana", password="pw2")
    report = push(fake.url, TOKEN, [], moved, dry_run=False)
    assert report.changes[0].action == "update"
    assert "url" in report.changes[0].detail and "jsonData.dbName" in report.changes[0].detail
    ds = fake.datasources[DATASOURCE_UID]
    assert (ds["url"], ds["database"], ds["jsonData"]["dbName"]) == ("http://influx-2:8086", "fmc_city", "fmc_city")
    assert ds["jsonData"]["timeInterval"] == "15m"
    # switching to a 2.x token drops nothing the user set and adds the header
    report = push(fake.url, TOKEN, [], influx_datasource("http://influx-2:8086", "fmc_city", token="t"), dry_run=False)
    assert fake.datasources[DATASOURCE_UID]["jsonData"]["httpHeaderName1"] == "Authorization"
    assert fake.secrets[DATASOURCE_UID]["httpHeaderValue1"] == "Token t"
    assert fake.datasources[DATASOURCE_UID]["user"] == ""


def test_a_datasource_update_changes_only_the_managed_settings_of_what_grafana_has(fake: FakeGrafana) -> None:
    push(fake.url, TOKEN, [], _ds(token="t"), dry_run=False)
    # set by someone in Grafana: a full PUT of push's own datasource would reset every one of these
    fake.datasources[DATASOURCE_UID].update(isDefault=True, withCredentials=True, basicAuth=True,
                                            basicAuthUser="proxy-user")
    fake.datasources[DATASOURCE_UID]["jsonData"].update(httpMode="POST", tlsSkipVerify=True)
    version = fake.datasources[DATASOURCE_UID]["version"]
    n = len(fake.requests)
    report = push(fake.url, TOKEN, [], influx_datasource("http://influx-2:8086", "fmc", token="t"), dry_run=False,
                  datasource_settings={"url"})
    assert (report.changes[0].action, report.changes[0].detail) == ("update", "differs in url")
    body = next(b for m, _, b in fake.requests[n:] if m == "PUT")
    assert body["version"] == version and "secureJsonFields" not in body  # what Grafana has, sent back
    ds = fake.datasources[DATASOURCE_UID]
    assert ds["url"] == "http://influx-2:8086"
    assert (ds["isDefault"], ds["withCredentials"], ds["basicAuth"], ds["basicAuthUser"]) == (
        True, True, True, "proxy-user")
    assert ds["jsonData"] == {"version": "InfluxQL", "dbName": "fmc", "httpMode": "POST", "tlsSkipVerify": True,
                              "httpHeaderName1": "Authorization"}
    assert fake.secrets[DATASOURCE_UID] == {"httpHeaderValue1": "Token t"}
    # all settings managed (the Python default): httpMode back to GET, the rest still kept
    push(fake.url, TOKEN, [], influx_datasource("http://influx-2:8086", "fmc", token="t"), dry_run=False)
    ds = fake.datasources[DATASOURCE_UID]
    assert ds["jsonData"]["httpMode"] == "GET" and ds["isDefault"] and ds["basicAuth"]
    with pytest.raises(PushUsageError, match="unknown datasource settings"):
        push(fake.url, TOKEN, [], _ds(), dry_run=False, datasource_settings={"uri"})


def test_a_dashboard_edited_in_grafana_is_replaced_and_push_says_so(fake: FakeGrafana) -> None:
    dashboards = _dashboards()
    push(fake.url, TOKEN, dashboards, _ds(), dry_run=False)
    fake.edit_in_grafana("fmc-bureau", by="admin", refresh="1m")
    changed = copy.deepcopy(dashboards)
    changed[0].model["refresh"] = "5m"  # a new fmc version changed the enterprise dashboard only
    for dry_run in (True, False):
        report = push(fake.url, TOKEN, changed, _ds(), dry_run=dry_run)
        details = {c.uid: (c.action, c.detail) for c in report.changes if c.kind == "dashboard"}
        assert details == {
            "fmc-enterprise": ("update", "content changed"),
            "fmc-bureau": ("update", "replaces version 2, saved in Grafana by admin, not by fmc grafana push"),
            "fmc-gateway": ("unchanged", "")}
    assert "updated (replaces version 2, saved in Grafana by admin" in report.render()
    assert "refresh" not in fake.dashboards["fmc-bureau"]["model"]  # the files are the source
    # pushed over: the next push has nothing to say
    assert not push(fake.url, TOKEN, changed, _ds(), dry_run=False).changed


def test_provisioned_datasource_and_dashboard_are_left_alone(fake: FakeGrafana) -> None:
    dashboards = _dashboards()
    push(fake.url, TOKEN, dashboards, _ds(), dry_run=False)
    fake.datasources[DATASOURCE_UID]["readOnly"] = True
    fake.dashboards["fmc-bureau"]["provisioned"] = True
    changed = copy.deepcopy(dashboards)
    changed[1].model["refresh"] = "1h"
    n = len(fake.requests)
    report = push(fake.url, TOKEN, changed, influx_datasource("http://other:8086", "fmc"), dry_run=False)
    assert [r for r in fake.requests[n:] if r[0] != "GET"] == []
    skipped = {c.uid: c.detail for c in report.changes if c.action == "skip"}
    assert set(skipped) == {DATASOURCE_UID, "fmc-bureau"}
    assert "provisioning file" in skipped[DATASOURCE_UID] and "url" in skipped[DATASOURCE_UID]
    assert "provisioned from a file" in skipped["fmc-bureau"]
    assert "2 skipped" in report.render()


def test_hostile_titles_and_queries_round_trip_and_stay_idempotent(fake: FakeGrafana) -> None:
    nasty = 'a "quoted" \'title\'; DROP MEASUREMENT x; SELECT * FROM /.*/ WHERE a=~/^(b|c)$/ \\ 终\n\t端 🏭'
    model = {"title": nasty, "panels": [{"id": 1, "title": nasty, "targets": [{"refId": "A", "query": nasty}]}],
             "templating": {"list": [{"name": "q", "query": 'SHOW TAG VALUES WITH KEY = "region"'}]}}
    d = [Dash("fmc-nasty_1", nasty, "fmc-x", nasty.replace("\n", " "), model)]
    report = push(fake.url, TOKEN, d, _ds(), dry_run=False)
    assert report.count("create") == 3
    stored = fake.dashboards["fmc-nasty_1"]["model"]
    assert stored["title"] == nasty and stored["panels"][0]["targets"][0]["query"] == nasty
    assert fake.folders["fmc-x"]["title"] == nasty.replace("\n", " ")
    assert "\n" not in report.render().split("\n")[2]  # the title's newline is shown escaped, on one line
    assert not push(fake.url, TOKEN, d, _ds(), dry_run=False).changed


@pytest.mark.parametrize("uid", ["../admin", "a b", "x" * 41, "", "a/b", "ü-umlaut", "a?b=c", "a%2Fb"])
def test_uids_grafana_cannot_take_are_refused_before_any_request(fake: FakeGrafana, uid: str) -> None:
    for bad in (Dash(uid, "t", "f", "F"), Dash("ok", "t", uid, "F")):
        with pytest.raises(PushUsageError, match="uid"):
            push(fake.url, TOKEN, [bad], _ds(), dry_run=False)
    assert fake.requests == []


def test_inconsistent_input_is_refused_before_any_request(fake: FakeGrafana) -> None:
    d = _dashboards()
    cases = {
        "appears twice": [d[0], d[0]],
        "two titles": [d[0], replace(d[1], folder_title="other")],
        "'general'": [replace(d[0], folder_uid="general")],
        "empty title": [replace(d[0], title=" ")],
    }
    for message, dashboards in cases.items():
        with pytest.raises(PushUsageError, match=message):
            push(fake.url, TOKEN, dashboards, _ds(), dry_run=False)
    for bad_url in ("grafana:3000", "ftp://h", "http://", "http://h:port"):
        with pytest.raises(PushUsageError, match="--url"):
            push(bad_url, TOKEN, d, _ds(), dry_run=False)
    with pytest.raises(PushUsageError, match="token"):
        push(fake.url, "", d, _ds(), dry_run=False)
    for kw, message in (({"url": "influxdb:8086"}, "--influx-url"), ({"database": " "}, "--influx-database"),
                        ({"token": "t", "user": "u", "password": "p"}, "not both"),
                        ({"password": "p"}, "--influx-user")):
        args = {"url": "http://influxdb:8086", "database": "fmc"} | kw
        with pytest.raises(PushUsageError, match=message):
            influx_datasource(args.pop("url"), args.pop("database"), **args)
    assert fake.requests == []


def test_grafana_under_a_sub_path() -> None:
    f = FakeGrafana(prefix="/grafana")
    for served in _serve(f):
        report = push(served.url, TOKEN, _dashboards(), _ds(), dry_run=False)  # no trailing slash
        assert report.count("create") == 6
        assert not push(served.url + "/", TOKEN, _dashboards(), _ds(), dry_run=False).changed
        assert all(p.startswith("/grafana/api/") for _, p, _ in served.requests)
    assert f.violations == []


# --- errors: one sentence, never a traceback -----------------------------------------------------------------


def test_wrong_token_gives_a_clear_message(fake: FakeGrafana) -> None:
    with pytest.raises(PushError, match=r"refused the token \(401 Unauthorized\) while reading datasource"):
        push(fake.url, "glsa_wrong", _dashboards(), _ds(), dry_run=False)
    assert fake.writes() == []


@pytest.mark.parametrize(("route", "answer", "expected"), [
    (("POST", "/datasources"), (403, {"message": "You'll need additional permissions to perform this action. "
                                                 "Permissions needed: datasources:create"}),
     r"denied creating datasource fmc-influxdb .*403 Forbidden: You'll need additional permissions.*Admin role"),
    (("POST", "/datasources"), (409, {"message": "data source with the same name already exists"}),
     r"409 Conflict: data source with the same name already exists\).*rename or delete it"),
    (("POST", "/folders"), (500, {"message": "database is locked"}),
     r"failed while creating folder fmc-zh .*\(500: database is locked\); see Grafana's log"),
    (("POST", "/dashboards/db"), (400, {"message": "Dashboard title cannot be empty", "status": "empty-name"}),
     r"refused saving dashboard fmc-enterprise .*\(400: Dashboard title cannot be empty\)"),
    (("POST", "/dashboards/db"), (412, {"message": "The dashboard has been changed by someone else",
                                        "status": "version-mismatch"}),
     r"\(412: The dashboard has been changed by someone else\)"),
    (("GET", "/dashboards/uid/.*"), (502, "<html>Bad Gateway</html>"), r"\(502: <html>Bad Gateway</html>\)"),
])
def test_grafana_errors_are_reported_with_grafanas_message(
    fake: FakeGrafana, route: tuple[str, str], answer: tuple[int, Any], expected: str
) -> None:
    fake.inject[route] = answer
    with pytest.raises(PushError, match=expected) as e:
        push(fake.url, TOKEN, _dashboards(), _ds(), dry_run=False)
    assert TOKEN not in str(e.value)


def test_grafana_down_gives_a_clear_message() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(PushError, match=r"cannot connect to Grafana at http://127.0.0.1:\d+/: connection refused; "
                                        r"is Grafana running"):
        push(f"http://127.0.0.1:{port}", TOKEN, _dashboards(), _ds(), dry_run=False)
    assert time.monotonic() - t0 < 5


def test_grafana_that_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # accepts connections (the kernel does) but never answers
        port = listener.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(PushError, match=r"did not answer within 0.5s while reading datasource fmc-influxdb"):
            push(f"http://127.0.0.1:{port}", TOKEN, _dashboards(), _ds(), dry_run=False, timeout=0.5)
        assert time.monotonic() - t0 < 5


def test_something_that_is_not_grafana_is_named_as_such() -> None:
    class Html(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = b"<!doctype html><title>router login</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with pytest.raises(PushError, match="not Grafana's JSON API; is --url Grafana's root address"):
            push(f"http://127.0.0.1:{server.server_address[1]}", TOKEN, _dashboards(), _ds(), dry_run=False)
    finally:
        server.shutdown()
        server.server_close()


# --- the command line ----------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> argparse.Namespace:
    from fmc.cli.plugins import central_timezone

    parser = argparse.ArgumentParser(prog="fmc")
    add_parser(parser.add_subparsers(dest="command"), central_timezone=central_timezone)
    return parser.parse_args(argv)


@pytest.fixture
def test_dashboards(monkeypatch: pytest.MonkeyPatch) -> list[Dash]:
    dashboards = _dashboards()
    loaded: list[tuple[str, str]] = []

    def load(lang: str, datasource_uid: str, timezone: str | None = None) -> list[Dash]:
        loaded.append((lang, datasource_uid))
        return dashboards

    monkeypatch.setattr(grafana, "_load_dashboards", load)
    for var in ("GRAFANA_TOKEN", "INFLUX_TOKEN", "INFLUX_PASSWORD", "INFLUX_URL", "INFLUX_DATABASE"):
        monkeypatch.delenv(var, raising=False)
    return dashboards


def test_cli_push_then_nothing_to_change(
    fake: FakeGrafana, test_dashboards: list[Dash], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    monkeypatch.setenv("INFLUX_TOKEN", "influx-tok")
    args = _cli(["grafana", "push", "--url", fake.url, "--influx-url", "http://influxdb:8086", "--dry-run"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing written" in out and "6 would be created" in out and fake.writes() == []

    args = _cli(["grafana", "push", "--url", fake.url, "--influx-url", "http://influxdb:8086"])
    assert args.handler(args) == 0
    assert "6 created" in capsys.readouterr().out
    assert fake.secrets[DATASOURCE_UID] == {"httpHeaderValue1": "Token influx-tok"}
    assert args.handler(args) == 0
    assert "nothing to change: 6 up to date" in capsys.readouterr().out


def test_a_cli_push_without_the_influx_settings_keeps_the_existing_datasource(
    fake: FakeGrafana, test_dashboards: list[Dash], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    monkeypatch.setenv("INFLUX_TOKEN", "influx-tok")
    first = _cli(["grafana", "push", "--url", fake.url, "--influx-url", "http://influxdb:8086"])
    assert first.handler(first) == 0
    ds = fake.datasources[DATASOURCE_UID]
    assert ds["url"] == "http://influxdb:8086" and ds["jsonData"]["httpHeaderName1"] == "Authorization"
    capsys.readouterr()

    # months later, after an upgrade: push the new dashboards from a shell without the InfluxDB settings
    monkeypatch.delenv("INFLUX_TOKEN")
    again = _cli(["grafana", "push", "--url", fake.url])
    assert again.handler(again) == 0
    assert "nothing to change: 6 up to date" in capsys.readouterr().out
    ds = fake.datasources[DATASOURCE_UID]
    assert ds["url"] == "http://influxdb:8086" and ds["database"] == "fmc"
    assert ds["jsonData"].get("httpHeaderName1") == "Authorization", "the InfluxDB token is no longer sent"
    # a setting given is changed, and only it
    monkeypatch.setenv("INFLUX_DATABASE", "plant_db")
    assert again.handler(again) == 0
    assert "updated (differs in database, jsonData.dbName)" in capsys.readouterr().out
    ds = fake.datasources[DATASOURCE_UID]
    assert (ds["url"], ds["database"], ds["jsonData"]["httpHeaderName1"]) == ("http://influxdb:8086", "plant_db",
                                                                              "Authorization")


def test_cli_influx_1x_user_and_password_from_the_environment(
    fake: FakeGrafana, test_dashboards: list[Dash], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_GRAFANA", TOKEN)
    monkeypatch.setenv("INFLUX_PASSWORD", "s3cret")
    monkeypatch.setenv("INFLUX_TOKEN", "stray-token")  # an explicit 1.x user wins over a token lying around
    args = _cli(["grafana", "push", "--url", fake.url, "--token-env", "MY_GRAFANA", "--influx-user", "grafana",
                 "--influx-database", "plant_db"])
    assert args.handler(args) == 0
    ds = fake.datasources[DATASOURCE_UID]
    assert (ds["user"], ds["database"], ds["url"]) == ("grafana", "plant_db", "http://localhost:8086")
    assert "httpHeaderName1" not in ds["jsonData"]
    assert fake.secrets[DATASOURCE_UID] == {"password": "s3cret"}


def test_cli_401_exits_1_with_one_sentence(
    fake: FakeGrafana, test_dashboards: list[Dash], capsys: pytest.CaptureFixture[str]
) -> None:
    args = _cli(["grafana", "push", "--url", fake.url, "--token", "glsa_wrong"])
    assert args.handler(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("fmc grafana push: Grafana at ") and "401 Unauthorized" in err
    assert "Traceback" not in err and err.count("\n") == 1 and "glsa_wrong" not in err


def test_cli_grafana_down_exits_1(test_dashboards: list[Dash], capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = _cli(["grafana", "push", "--url", f"http://127.0.0.1:{port}", "--token", TOKEN])
    assert args.handler(args) == 1
    err = capsys.readouterr().err
    assert "connection refused" in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "env", "message"), [
    ([], {}, "no Grafana token: set GRAFANA_TOKEN"),
    (["--token-env", "NOPE"], {}, "no Grafana token: set NOPE"),
    (["--token", TOKEN, "--influx-token-env", "NOT_SET"], {}, "--influx-token-env NOT_SET: that variable is not set"),
    (["--token", TOKEN, "--influx-user", "u"], {}, "needs its password in INFLUX_PASSWORD"),
    (["--token", TOKEN, "--influx-url", "influxdb:8086"], {}, "is not an http(s) URL"),
    (["--token", TOKEN], {"INFLUX_TOKEN": "t", "INFLUX_PASSWORD": "p"}, None),  # password unused without a user
])
def test_cli_bad_usage_exits_2_before_any_request(
    fake: FakeGrafana, test_dashboards: list[Dash], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str], message: str | None,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = _cli(["grafana", "push", "--url", fake.url, *argv])
    code = args.handler(args)
    if message is None:
        assert code == 0
        return
    assert code == 2
    assert message in capsys.readouterr().err
    assert fake.requests == []


def test_cli_token_and_token_env_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _cli(["grafana", "push", "--url", "http://g:3000", "--token", "a", "--token-env", "B"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        _cli(["grafana", "push", "--url", "http://g:3000", "--lang", "fr"])
    assert "invalid choice" in capsys.readouterr().err


def test_fmc_command_runs_grafana_push(
    fake: FakeGrafana, test_dashboards: list[Dash], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fmc.cli.main import main

    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    assert main(["grafana", "push", "--url", fake.url, "--dry-run"]) == 0
    assert "6 would be created" in capsys.readouterr().out and fake.writes() == []
    assert main(["grafana", "push", "--url", fake.url, "--token", "glsa_wrong"]) == 1


def test_module_import_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, fmc.central.grafana.push; "
            "print(sorted(m for m in ('grafana_client', 'niquests') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the real dashboards (fmc/central/grafana/dashboards/) ----------------------------------------------------


def _real_dashboards() -> Any:
    return pytest.importorskip("fmc.central.grafana.dashboards",
                               reason="fmc/central/grafana/dashboards/ not there yet")


@pytest.mark.parametrize("lang", ["zh", "en", "both"])
def test_real_dashboards_push_and_repush(
    fake: FakeGrafana, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lang: str
) -> None:
    real = _real_dashboards()
    assert real.DATASOURCE_UID == DATASOURCE_UID
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    monkeypatch.delenv("INFLUX_TOKEN", raising=False)
    args = _cli(["grafana", "push", "--url", fake.url, "--lang", lang])
    assert args.handler(args) == 0, capsys.readouterr().err
    expected = grafana._load_dashboards(lang, DATASOURCE_UID)
    assert expected and set(fake.dashboards) == {d.uid for d in expected}
    for d in expected:
        assert fake.dashboards[d.uid]["folderUid"] == d.folder_uid
        assert fake.folders[d.folder_uid]["title"] == d.folder_title
        # every panel's datasource is the one pushed
        text = json.dumps(fake.dashboards[d.uid]["model"])
        uids = set(re.findall(r'"datasource": \{[^{}]*"uid": "([^"]+)"', text))
        assert DATASOURCE_UID in uids
        assert uids <= {DATASOURCE_UID, "-- Grafana --", "grafana"}, uids
    capsys.readouterr()
    assert args.handler(args) == 0
    assert "nothing to change" in capsys.readouterr().out


def _central_toml(tmp_path: Any, timezone: str) -> Any:
    """A central.toml whose plan is the built-in one in another time zone."""
    from fmc.central.config import plan_path

    plan = plan_path("zhejiang-2017-2020").read_text(encoding="utf-8")
    assert plan.count('timezone = "Asia/Shanghai"') == 1
    (tmp_path / "plan.toml").write_text(plan.replace('"Asia/Shanghai"', f'"{timezone}"'), encoding="utf-8")
    path = tmp_path / "central.toml"
    path.write_text('targets = "plan.toml"\n[store]\ntype = "embedded"\npath = "store.db"\n', encoding="utf-8")
    return path


def test_a_push_with_a_central_config_buckets_the_days_of_its_plan_zone(
    fake: FakeGrafana, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    """A plant whose days are Xinjiang's (UTC+6) gets dashboards whose day buckets are its own days."""
    _real_dashboards()
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    monkeypatch.delenv("INFLUX_TOKEN", raising=False)
    central = _central_toml(tmp_path, "Asia/Urumqi")
    args = _cli(["grafana", "push", "--url", fake.url, "--lang", "both", "-c", str(central)])
    assert args.handler(args) == 0, capsys.readouterr().err
    grouped = 0
    for uid, saved in fake.dashboards.items():
        text = json.dumps(saved["model"])
        assert "Asia/Shanghai" not in text, uid
        grouped += text.count("GROUP BY time($__interval)")
        assert text.count("GROUP BY time($__interval)") == text.count("tz('Asia/Urumqi')"), uid
    assert grouped >= 14  # the meter coverage and the gateway panels, both languages
    capsys.readouterr()
    assert args.handler(args) == 0
    assert "nothing to change" in capsys.readouterr().out
    # without -c: the default zone, so the same Grafana's dashboards are updated back to Shanghai's days
    default = _cli(["grafana", "push", "--url", fake.url, "--lang", "both"])
    assert default.handler(default) == 0
    assert "4 updated, 5 unchanged" in capsys.readouterr().out  # the bureau groups by no interval
    assert all("tz('Asia/Shanghai')" in json.dumps(d["model"]) for uid, d in fake.dashboards.items()
               if uid.startswith("fmc-gateways"))


def test_a_central_config_refused_exits_2_before_any_request(
    fake: FakeGrafana, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    for zone in ("Mars/Base", "Asia/Shanghai') fill(0"):
        args = _cli(["grafana", "push", "--url", fake.url, "-c", str(_central_toml(tmp_path, zone))])
        assert args.handler(args) == 2
        err = capsys.readouterr().err
        assert "invalid configuration" in err and "timezone" in err and "IANA" in err and "Traceback" not in err
    args = _cli(["grafana", "push", "--url", fake.url, "-c", str(tmp_path / "missing.toml")])
    assert args.handler(args) == 2
    assert "missing.toml" in capsys.readouterr().err
    assert fake.requests == []
