"""`deepfleet-runtime release activate|rollback|use-venv|show`: a host's runtime releases (run as
root by deploys; see runtimereleases.py).

    activate  make the release of a rendered runtime.yaml + runtime version current, keep the last N
    rollback  switch back to the previous release (or --to RELEASE), its model verified first;
              --dry-run names that release and its runtime (the image, in Docker mode)
    use-venv  point <home>/venv at a freshly installed venv; remove venvs nothing refers to
    show      the current release's record and the kept ones (JSON)
"""

from __future__ import annotations

import json
from pathlib import Path

from .model import DEFAULT_KEYS_DIR, _report

DEFAULT_ROOT = Path("/opt/deepfleet/releases")


def register(commands) -> None:
    parser = commands.add_parser("release", help="activate, roll back and show this host's runtime releases")
    sub = parser.add_subparsers(dest="release_command", required=True)

    activate = sub.add_parser("activate", help="make the release of a runtime.yaml + runtime version current")
    _root(activate)
    activate.add_argument("--config", type=Path, required=True, help="the rendered runtime.yaml to release")
    runtime = activate.add_mutually_exclusive_group(required=True)
    runtime.add_argument("--venv", type=Path, help="the runtime's venv (systemd mode)")
    runtime.add_argument("--image", help="the runtime's container image (Docker mode)")
    activate.add_argument("--install-id", default="", help="the venv's wheel set (systemd mode)")
    activate.add_argument("--group", default="deepfleet")
    activate.add_argument("--keep", type=int, default=3, help="releases to keep (current included)")
    activate.set_defaults(func=activate_command)

    rollback = sub.add_parser("rollback", help="switch back to the previous release (or --to RELEASE)")
    _root(rollback)
    rollback.add_argument("--to", default=None, help="a kept release id, or a model release id")
    rollback.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR)
    rollback.add_argument("--group", default="deepfleet")
    rollback.add_argument("--model-keep", type=int, default=3, help="model releases to keep")
    rollback.add_argument("--config", type=Path, default=None,
                          help="the deploy's rendered runtime.yaml: gets the release's config back")
    rollback.add_argument("--dry-run", action="store_true",
                          help="print the release it would switch to (with its runtime), changing nothing")
    rollback.set_defaults(func=rollback_command)

    use_venv = sub.add_parser("use-venv", help="point <home>/venv at VENV; remove unreferenced venvs")
    _root(use_venv)
    use_venv.add_argument("--venv", type=Path, required=True)
    use_venv.set_defaults(func=use_venv_command)

    show = sub.add_parser("show", help="the current release and the kept ones (JSON)")
    _root(show)
    show.set_defaults(func=show_command)


def _root(parser) -> None:
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"default: {DEFAULT_ROOT}")


def _errors():
    from ..runtimereleases import ReleaseError

    return (ReleaseError,)


def activate_command(args) -> int:
    from ..releasestore import ReleaseStore
    from ..runtimereleases import activate_release

    runtime = {"install_id": args.install_id, "venv": str(args.venv)} if args.venv else {"image": args.image}
    return _report(lambda: activate_release(ReleaseStore(args.root), args.config, runtime, args.group, args.keep),
                   _errors())


def rollback_command(args) -> int:
    from ..modelstore import KeyDirectory
    from ..releasestore import ReleaseStore
    from ..runtimereleases import rollback_release, rollback_target

    if args.dry_run:
        return _report(lambda: rollback_target(ReleaseStore(args.root), args.to), _errors())
    return _report(lambda: rollback_release(ReleaseStore(args.root), args.to, KeyDirectory(args.keys_dir),
                                            args.group, args.model_keep, args.config), _errors())


def use_venv_command(args) -> int:
    from ..releasestore import ReleaseStore
    from ..runtimereleases import use_venv

    return _report(lambda: use_venv(args.venv.parent.parent, args.venv, ReleaseStore(args.root)), _errors())


def show_command(args) -> int:
    from ..releasestore import ReleaseStore
    from ..runtimereleases import read_release

    store = ReleaseStore(args.root)
    current = store.current()
    print(json.dumps({"current": read_release(store, current) if current else None,
                      "kept": [read_release(store, r) for r in reversed(store.history())]}))
    return 0
