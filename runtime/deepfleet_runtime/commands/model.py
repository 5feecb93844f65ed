"""`deepfleet-runtime model activate|rollback|verify|unseal-keys|retire-keys`: a host's model releases
and keys (run as root by deploys and by the runtime unit).

    activate     verify a pushed release, switch the host's current release to it, keep the last N
    rollback     switch back to the previously active release (or --to RELEASE), after verifying it
    verify       check a release directory: signature, data key, every chunk and hash
    unseal-keys  the runtime's private copy of the keys (sealed ones decrypted), for its unit
    retire-keys  remove the KEKs no kept release is wrapped with
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT_MODELS_DIR = Path("/opt/deepfleet/models")
DEFAULT_KEYS_DIR = Path("/etc/deepfleet/keys")


def register(commands) -> None:
    parser = commands.add_parser("model", help="verify, activate and roll back model releases on this host")
    sub = parser.add_subparsers(dest="model_command", required=True)

    activate = sub.add_parser("activate", help="verify a pushed release and make it current")
    _common(activate)
    activate.add_argument("--release", required=True)
    activate.set_defaults(func=activate_command)

    rollback = sub.add_parser("rollback", help="switch back to the previous release (or --to RELEASE)")
    _common(rollback)
    rollback.add_argument("--to", default=None, help="a release id kept on this host")
    rollback.set_defaults(func=rollback_command)

    unseal = sub.add_parser("unseal-keys", help="decrypt the host's keys into the runtime's private directory")
    unseal.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR)
    unseal.add_argument("--to", type=Path, required=True, help="the private directory (created 0700)")
    unseal.add_argument("--user", required=True, help="the service user that owns the copy")
    unseal.set_defaults(func=unseal_command)

    retire = sub.add_parser("retire-keys", help="remove the KEKs no kept release is wrapped with")
    retire.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR)
    retire.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    retire.set_defaults(func=retire_command)

    verify = sub.add_parser("verify", help="check a release directory in full")
    verify.add_argument("release_dir", type=Path)
    verify.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR)
    verify.set_defaults(func=verify_command)


def _common(parser) -> None:
    parser.add_argument("--name", required=True, help="the model name")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR)
    parser.add_argument("--group", default="deepfleet", help="the service group that may read releases")
    parser.add_argument("--keep", type=int, default=3, help="releases to keep (current included)")


def activate_command(args) -> int:
    from ..modelstore import KeyDirectory
    from ..modelstore.hostreleases import ModelReleases, activate

    return _report(lambda: activate(ModelReleases(args.models_dir, args.name), args.release,
                                    KeyDirectory(args.keys_dir), args.group, args.keep))


def rollback_command(args) -> int:
    from ..modelstore import KeyDirectory
    from ..modelstore.hostreleases import ModelReleases, activate, rollback_target

    def run():
        releases = ModelReleases(args.models_dir, args.name)
        target = rollback_target(releases, args.to)
        return activate(releases, target, KeyDirectory(args.keys_dir), args.group, args.keep, allow_older=True)

    return _report(run)


def unseal_command(args) -> int:
    import pwd

    from ..modelstore.sealedkeys import unseal_into

    account = pwd.getpwnam(args.user)
    return _report(lambda: {"keys": unseal_into(args.keys_dir, args.to, account.pw_uid, account.pw_gid)})


def retire_command(args) -> int:
    from ..modelstore.sealedkeys import retire_unused

    return _report(lambda: {"retired": retire_unused(args.keys_dir, args.models_dir)})


def verify_command(args) -> int:
    from ..modelstore import KeyDirectory, Release

    def run():
        release = Release.open(args.release_dir, KeyDirectory(args.keys_dir))
        release.verify()
        return {"verified": release.manifest.release_name, "files": len(release.manifest.files)}

    return _report(run)


def _report(action, errors: tuple[type[Exception], ...] = ()) -> int:
    """Run `action`; print its result as one JSON line, or the error on stderr (exit 1)."""
    from ..modelstore import ModelStoreError

    try:
        result = action()
    except (ModelStoreError, *errors) as exc:
        print(f"deepfleet-runtime: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
