"""`deepfleet dashboards push` against a stand-in for Grafana's dashboard API (Grafana itself is in
neither Debian's nor PyPI's repositories). The stand-in answers as Grafana's HTTP API documentation
prescribes for POST /api/dashboards/db: a Bearer service-account token, {dashboard, overwrite,
folderUid, message} in, {id, uid, url, status, version} out; 401 {"message": ...} for a bad token."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deepfleet.cli import main
from deepfleet_runtime.serving import build_server
from tests.conftest import ServerThread, free_port

TOKEN = "glsa_stand-in-token_0123456789"


class StandInGrafana:
    def __init__(self):
        self.dashboards: dict[str, dict] = {}
        self.bodies: list[dict] = []

    async def save(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"message": "Invalid API key"}, 401)
        body = await request.json()
        self.bodies.append(body)
        dashboard = body["dashboard"]
        uid = dashboard["uid"]
        known = self.dashboards.get(uid)
        if known and not body.get("overwrite"):
            return JSONResponse({"message": "A dashboard with the same uid already exists",
                                 "status": "name-exists"}, 412)
        version = known["version"] + 1 if known else 1
        self.dashboards[uid] = {"version": version, "dashboard": dashboard, "folderUid": body.get("folderUid")}
        return JSONResponse({"id": len(self.dashboards), "uid": uid, "url": f"/d/{uid}/{uid}", "status": "success",
                             "version": version, "slug": uid})


@pytest.fixture
def grafana():
    stand_in = StandInGrafana()
    port = free_port()
    app = Starlette(routes=[Route("/api/dashboards/db", stand_in.save, methods=["POST"])])
    with ServerThread(build_server(app, "127.0.0.1", port)):
        stand_in.url = f"http://127.0.0.1:{port}"
        yield stand_in


def test_push_creates_then_updates_the_four_dashboards_in_place(grafana, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    args = ["dashboards", "push", "--grafana-url", grafana.url, "--token-file", str(token), "--folder-uid", "ops"]
    assert main(args) == 0 and main(args) == 0
    assert sorted(grafana.dashboards) == ["deepfleet-engine", "deepfleet-fleet", "deepfleet-gateway", "deepfleet-gpus"]
    assert {entry["version"] for entry in grafana.dashboards.values()} == {2}
    assert all(body["overwrite"] and body["dashboard"]["id"] is None and body["folderUid"] == "ops"
               for body in grafana.bodies)
    out = capsys.readouterr().out
    assert f"deepfleet-fleet: version 2 at {grafana.url}/d/deepfleet-fleet/deepfleet-fleet" in out
    assert TOKEN not in out


def test_a_bad_token_is_refused_with_the_fix_and_never_printed(grafana, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("wrong-token")
    assert main(["dashboards", "push", "--grafana-url", grafana.url, "--token-file", str(token)]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401 Invalid API key" in err and "service-account token" in err and "wrong-token" not in err
    assert grafana.dashboards == {}


def test_the_dashboards_are_the_files_to_import_by_hand(capsys):
    assert main(["dashboards", "list"]) == 0
    files = capsys.readouterr().out.split()
    assert len(files) == 4 and all(json.load(open(path))["uid"].startswith("deepfleet-") for path in files)
