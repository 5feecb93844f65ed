"""`deepfleet backup create --out FILE [--recipient PUB]`, `backup verify FILE`, `backup restore FILE
[--force]`, `backup keygen --out KEY`. The passphrase comes from DEEPFLEET_BACKUP_PASSPHRASE or a
prompt, never from the command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PASSPHRASE_VARIABLE = "DEEPFLEET_BACKUP_PASSPHRASE"


def register(commands) -> None:
    import argparse

    opening = argparse.ArgumentParser(add_help=False)
    opening.add_argument("file", type=Path)
    opening.add_argument("--identity", type=Path, help="the recipient's private key, for a backup made with "
                         "--recipient (default: the passphrase in $DEEPFLEET_BACKUP_PASSPHRASE, else asked)")
    opening.add_argument("--signer", type=Path, help="require this Ed25519 public key (PEM) to have signed it, "
                         "e.g. a copy of model-keys/model-verify.pub kept elsewhere")
    backup = commands.add_parser("backup", help="encrypted, signed backups of the control state (CA, keys, keyring)")
    sub = backup.add_subparsers(dest="backup_command", required=True)
    create = sub.add_parser("create", help="write the state dir (without caches) to one encrypted, signed file")
    create.add_argument("--out", type=Path, required=True, help="the backup file (mode 0600), outside the state dir")
    create.add_argument("--recipient", type=Path, help="seal it to this X25519 public key (`backup keygen`) "
                        "instead of a passphrase")
    create.add_argument("--force", action="store_true", help="replace --out if it exists")
    create.set_defaults(func=create_command)
    verify = sub.add_parser("verify", parents=[opening], help="check signature, decryption and every file's hash; "
                            "list the files (never their contents)")
    verify.set_defaults(func=verify_command)
    restore = sub.add_parser("restore", parents=[opening], help="verify, then bring the state back into "
                             "$DEEPFLEET_HOME (refused when it holds state, unless --force)")
    restore.add_argument("--force", action="store_true", help="restore over existing state (it is moved aside "
                         "to <state>.before-restore-<time>, not deleted)")
    restore.set_defaults(func=restore_command)
    keygen = sub.add_parser("keygen", help="make an X25519 key pair for --recipient/--identity (KEY and KEY.pub)")
    keygen.add_argument("--out", type=Path, required=True)
    keygen.set_defaults(func=keygen_command)


def create_command(args) -> int:
    from ..backup import create_backup
    from ..backupformat import key_id, passphrase_lock, raw_public, recipient_lock
    from ..paths import cache_dir, state_dir

    if args.recipient:
        recipient = _public_key(args.recipient, "x25519")
        lock, keys = recipient_lock(recipient)
        sealed = f"recipient key {key_id(raw_public(recipient))} (opens with its --identity)"
    else:
        lock, keys = passphrase_lock(_passphrase(confirm=True))
        sealed = f"the passphrase (${PASSPHRASE_VARIABLE})"
    manifest = create_backup(state_dir(), cache_dir(), args.out, lock, keys, force=args.force)
    size = sum(f["size"] for f in manifest["files"])
    print(f"wrote {args.out}: {len(manifest['files'])} files ({size} bytes) of {state_dir()}, sealed to {sealed}")
    for name in manifest["skipped"]:
        print(f"  skipped {name} (not a regular file or directory)")
    print(f"  check it with `deepfleet backup verify {args.out}`; store it off this machine")
    return 0


def verify_command(args) -> int:
    from ..backup import verify_backup

    result = verify_backup(args.file, **_opening(args))
    _describe(args.file, result)
    for entry in result["manifest"]["dirs"]:
        print(f"  {entry['mode']}  {'-':>10}  {entry['path']}/")
    for entry in result["manifest"]["files"]:
        print(f"  {entry['mode']}  {entry['size']:>10}  {entry['path']}")
    print(f"OK: signature, decryption and all {len(result['manifest']['files'])} file hashes check out")
    return 0


def restore_command(args) -> int:
    from ..backup import restore_backup
    from ..paths import state_dir

    result = restore_backup(args.file, state_dir(), force=args.force, **_opening(args))
    _describe(args.file, result)
    if result["moved_aside"]:
        print(f"  the previous state was moved to {result['moved_aside']}")
    print(f"restored {len(result['manifest']['files'])} files into {state_dir()}; check with "
          "`deepfleet pki list` and `deepfleet keys list`")
    return 0


def keygen_command(args) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    from ..atomicfile import write_atomic
    from ..backupformat import BackupError, key_id, raw_public
    from ..keyfiles import private_key_pem

    public_path = args.out.with_name(args.out.name + ".pub")
    if args.out.exists() or public_path.exists():
        raise BackupError(f"{args.out} or {public_path} exists; choose another --out")
    key = x25519.X25519PrivateKey.generate()
    write_atomic(args.out, private_key_pem(key), mode=0o600)
    write_atomic(public_path, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), mode=0o644)
    print(f"recipient key {key_id(raw_public(key.public_key()))}: {public_path} (give to `backup create "
          f"--recipient`), {args.out} (0600; keep it away from the control machine: it opens the backups)")
    return 0


def _describe(path: Path, result: dict) -> None:
    header = result["header"]
    lock = header["lock"]["kind"]
    signer = header["signer"]
    who = ("the model signing key" if signer["kind"] == "model-signing"
           else "a one-off key (the state had no model signing key)")
    print(f"{path}: made {header['created']} on {result['manifest'].get('host', '?')}, sealed with "
          f"{'a passphrase' if lock == 'passphrase' else 'a recipient key'}, signed by {who} {signer['id']}")


def _opening(args) -> dict:
    from ..backupformat import BackupError, raw_public
    from ..keyfiles import load_private_key

    options = {"passphrase": None, "identity": None, "signer": None}
    if args.identity:
        options["identity"] = load_private_key(args.identity, BackupError)
        if not hasattr(options["identity"], "exchange"):
            raise BackupError(f"{args.identity} is not an X25519 private key (`deepfleet backup keygen` makes one)")
    else:
        options["passphrase"] = _passphrase(confirm=False)
    if args.signer:
        options["signer"] = raw_public(_public_key(args.signer, "ed25519"))
    return options


def _public_key(path: Path, kind: str):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

    from ..backupformat import BackupError

    wanted = {"x25519": x25519.X25519PublicKey, "ed25519": ed25519.Ed25519PublicKey}[kind]
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} is not a PEM public key ({exc})") from None
    if not isinstance(key, wanted):
        raise BackupError(f"{path} is not an {kind} public key")
    return key


def _passphrase(confirm: bool) -> str | None:
    from ..backupformat import BackupError

    value = os.environ.get(PASSPHRASE_VARIABLE)
    if value:
        return value
    if not sys.stdin.isatty():
        if confirm:
            raise BackupError(f"no passphrase: set {PASSPHRASE_VARIABLE} (or run on a terminal to be asked), "
                              "or seal the backup to a key with --recipient")
        return None
    import getpass

    value = getpass.getpass("backup passphrase: ")
    if confirm and getpass.getpass("again: ") != value:
        raise BackupError("the two passphrases differ; run it again")
    return value
