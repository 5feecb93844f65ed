"""`deepfleet model encrypt|verify|keys ...`: encrypted, signed model releases (docs/model-format.md)."""

from __future__ import annotations

from pathlib import Path

from . import log


def register(commands) -> None:
    model = commands.add_parser("model", help="encrypted, signed model releases and the fleet's model keys")
    sub = model.add_subparsers(dest="model_command", required=True)

    encrypt = sub.add_parser("encrypt", help="encrypt and sign a model directory into a release directory")
    encrypt.add_argument("source", type=Path, metavar="SRC_DIR")
    encrypt.add_argument("--out", required=True, type=Path, help="the release directory to create")
    encrypt.add_argument("--name", help="model name (default: the source directory's name)")
    encrypt.add_argument("--quantization", help="recorded in the manifest (default: from config.json, else none)")
    _keys_dir(encrypt)
    encrypt.set_defaults(func=encrypt_command)

    verify = sub.add_parser("verify", help="check a release: signature, data key, every chunk and hash")
    verify.add_argument("release_dir", type=Path, metavar="DIR")
    verify.add_argument("--signature-only", action="store_true", help="check signature and data key, not the files")
    _keys_dir(verify)
    verify.set_defaults(func=verify_command)

    keys = sub.add_parser("keys", help="the fleet's key-encryption keys and manifest signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create the signing key and a first KEK (kept if they exist)")
    _keys_dir(create)
    create.set_defaults(func=keys_create_command)
    rotate = keys_sub.add_parser("rotate", help="a new current KEK; re-wrap releases' data keys with it")
    rotate.add_argument("releases", type=Path, nargs="*", metavar="RELEASE_DIR",
                        help="releases to re-wrap besides those in the deploy cache")
    _keys_dir(rotate)
    rotate.set_defaults(func=keys_rotate_command)
    rewrap = keys_sub.add_parser("rewrap", help="re-wrap releases' data keys with the current KEK")
    rewrap.add_argument("releases", type=Path, nargs="*", metavar="RELEASE_DIR",
                        help="releases to re-wrap besides those in the deploy cache")
    _keys_dir(rewrap)
    rewrap.set_defaults(func=keys_rewrap_command)
    export = keys_sub.add_parser("export-verify", help="copy the keys without the signing key (for a site that "
                                                        "deploys releases but never signs them)")
    export.add_argument("dest", type=Path, metavar="DEST_DIR")
    _keys_dir(export)
    export.set_defaults(func=keys_export_command)
    show = keys_sub.add_parser("list", help="key ids (never key material)")
    _keys_dir(show)
    show.set_defaults(func=keys_list_command)


def _keys_dir(parser) -> None:
    parser.add_argument("--keys-dir", type=Path, default=None, help="default: <state>/model-keys")


def _load(args):
    from ..modelkeys import load_model_keys
    from ..paths import state_dir

    return load_model_keys(args.keys_dir or state_dir() / "model-keys")


def encrypt_command(args) -> int:
    from ..modelpack import encrypt_model

    manifest = encrypt_model(args.source, args.out, args.name or args.source.resolve().name, _load(args),
                             args.quantization, log)
    print(f"encrypted {manifest.release_name} into {args.out}: {len(manifest.files)} files, "
          f"{manifest.encrypted_bytes} bytes, quantization {manifest.quantization}")
    return 0


def verify_command(args) -> int:
    from ..modelpack import verify_release_dir

    manifest = verify_release_dir(args.release_dir, _load(args), decrypt=not args.signature_only, log=log)
    checked = "signature and data key" if args.signature_only else "signature, data key, every chunk and hash"
    print(f"{manifest.release_name} verified ({checked}); signed by {manifest.signing_key_id}")
    return 0


def keys_create_command(args) -> int:
    from ..modelkeys import create_model_keys
    from ..paths import state_dir

    keys, created = create_model_keys(args.keys_dir or state_dir() / "model-keys")
    verb = "created" if created else "kept the existing"
    print(f"{verb} model keys in {keys.path}: KEK {keys.current_kek_id()}, signing key {keys.signing_key_id()} "
          "(back this directory up: releases cannot be opened without it)")
    return 0


def keys_export_command(args) -> int:
    from ..modelkeys import export_verify_only

    site = export_verify_only(_load(args), args.dest)
    print(f"verify-only model keys in {site.path} (KEKs and the verify key, no signing key): carry them to "
          "the site as model_keys_dir; they open the model, so keep them as secret as the original")
    return 0


def keys_rotate_command(args) -> int:
    from ..modelkeys import rotate_kek

    keys = _load(args)
    key_id = rotate_kek(keys)
    print(f"new current KEK {key_id}; older KEKs stay so existing releases still open")
    return _rewrap(keys, args.releases)


def keys_rewrap_command(args) -> int:
    return _rewrap(_load(args), args.releases)


def _rewrap(keys, extra: list[Path]) -> int:
    from ..modelpack import cached_releases, rewrap_release
    from ..paths import cache_dir

    for release_dir in [*cached_releases(cache_dir(), keys), *extra]:
        change = rewrap_release(release_dir, keys)
        print(f"{release_dir}: " + (f"re-wrapped, KEK {change[0]} -> {change[1]}" if change else "already current"))
    print("deploy to give hosts the new KEK and re-wrapped key files (weights are not re-sent)")
    return 0


def keys_list_command(args) -> int:
    keys = _load(args)
    keyring = keys.keyring()
    print(f"signing key {keys.signing_key_id()} ({keys.path})")
    for key_id, info in sorted(keyring["keks"].items(), key=lambda item: item[1]["created"]):
        marker = " (current)" if key_id == keyring["current_kek"] else ""
        print(f"KEK {key_id} created {info['created']}{marker}")
    return 0
