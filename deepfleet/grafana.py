"""The dashboards of monitoring/dashboards/ into a Grafana, through its HTTP API (POST
/api/dashboards/db with a service-account token; Grafana's documented dashboard API). Each dashboard
keeps its uid, so pushing again updates it in place (overwrite) instead of adding a copy. They pick
their Prometheus through their own `datasource` variable, so no data source mapping is needed;
importing the JSON files by hand (Dashboards > New > Import) gives the same result."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx

from .paths import PROJECT_ROOT

DASHBOARDS = PROJECT_ROOT / "monitoring" / "dashboards"


class GrafanaError(RuntimeError):
    """Grafana refused; the message says what it answered and what to do."""


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def push_dashboards(grafana_url: str, token: str, folder_uid: str | None = None,
                    cafile: Path | None = None) -> list[dict]:
    """Create or update every dashboard; returns Grafana's answers ({uid, url, version, ...})."""
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(cafile)) if cafile else True
    answers = []
    with httpx.Client(base_url=grafana_url.rstrip("/"), verify=verify, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        for path in dashboard_files():
            dashboard = json.loads(path.read_text()) | {"id": None}
            body = {"dashboard": dashboard, "overwrite": True, "message": "deepfleet dashboards push"}
            if folder_uid:
                body["folderUid"] = folder_uid
            try:
                answer = client.post("/api/dashboards/db", json=body)
            except httpx.HTTPError as exc:
                raise GrafanaError(f"cannot reach Grafana at {grafana_url}: {exc}") from None
            if answer.status_code != 200:
                raise GrafanaError(_refusal(answer, path.name))
            answers.append(answer.json())
    return answers


def _refusal(answer: httpx.Response, name: str) -> str:
    try:
        message = answer.json().get("message", "")
    except ValueError:
        message = answer.text[:200]
    hint = {401: "the token is not valid: create a service-account token in Grafana and pass its file",
            403: "the token's service account may not write dashboards: give it the Editor role",
            404: "no such folder: check --folder-uid"}.get(answer.status_code, "see Grafana's log")
    return f"Grafana refused {name}: HTTP {answer.status_code} {message}; {hint}"
