"""`deepfleet dashboards push --grafana-url URL --token-file FILE`: the Grafana dashboards of
monitoring/dashboards/ into a Grafana (deepfleet/grafana.py); `deepfleet dashboards list`."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    dashboards = commands.add_parser("dashboards", help="the Grafana dashboards (monitoring/dashboards/)")
    sub = dashboards.add_subparsers(dest="dashboards_command", required=True)
    push = sub.add_parser("push", help="create or update them in a Grafana")
    push.add_argument("--grafana-url", required=True, help="e.g. https://grafana.internal:3000")
    push.add_argument("--token-file", required=True, type=Path,
                      help="a file holding a Grafana service-account token (Editor role)")
    push.add_argument("--folder-uid", default=None, help="the folder to put them in (default: General)")
    push.add_argument("--cafile", type=Path, default=None, help="CA bundle that signed Grafana's certificate")
    push.set_defaults(func=push_command)
    listing = sub.add_parser("list", help="the dashboard files, to import by hand")
    listing.set_defaults(func=list_command)


def push_command(args) -> int:
    from ..grafana import push_dashboards

    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {args.token_file}: {exc.strerror}") from None
    for answer in push_dashboards(args.grafana_url, token, args.folder_uid, args.cafile):
        where = f"{args.grafana_url.rstrip('/')}{answer.get('url', '')}"
        print(f"{answer.get('uid')}: version {answer.get('version')} at {where}")
    return 0


def list_command(args) -> int:
    from ..grafana import dashboard_files

    for path in dashboard_files():
        print(path)
    return 0
