"""`deepfleet bundle build INVENTORY --out DIR` and `deepfleet bundle verify DIR`: air-gapped installs
(deepfleet/bundle/, docs/air-gapped.md).

`build` asks the roles what each host of the inventory installs (roles/bundle_contents.py: this
command sits beside deploys/, above the roles) and builds one signed bundle of it.
"""

from __future__ import annotations

from pathlib import Path

from . import log


def register(commands) -> None:
    from ..bundle.signing import KEY_VALID_DAYS

    bundle = commands.add_parser("bundle", help="one signed offline bundle for air-gapped installs")
    sub = bundle.add_subparsers(dest="bundle_command", required=True)

    build = sub.add_parser("build", help="build the bundle of everything INVENTORY's hosts install (connected machine)")
    build.add_argument("inventory", type=Path, metavar="INVENTORY", help="a pyinfra inventory file")
    build.add_argument("--out", required=True, type=Path, metavar="DIR", help="the bundle directory to create")
    build.add_argument("--lock", type=Path, metavar="LOCK",
                       help="a bundle's lock.json: take exactly its versions (the same bytes again)")
    build.add_argument("--signing-key-dir", type=Path, default=None,
                       help="the bundle signing key (default: <state>/bundle-keys, created on first use, "
                       "sealed under DEEPFLEET_KEY_PASSPHRASE when set)")
    build.add_argument("--signing-key-valid-days", type=int, default=KEY_VALID_DAYS, metavar="DAYS",
                       help=f"how long a signing key made by this build stays valid (default: {KEY_VALID_DAYS})")
    build.set_defaults(func=build_command)

    verify = sub.add_parser("verify", help="check a bundle's signature and every file's hash")
    verify.add_argument("bundle_dir", type=Path, metavar="DIR")
    verify.add_argument("--trusted-key", type=Path, default=None,
                        help="the signer's public key (default: <state>/bundle-keys/bundle-signing.asc)")
    verify.set_defaults(func=verify_command)


def build_command(args) -> int:
    from roles.bundle_contents import inventory_bundle_spec
    from roles.common import control_path
    from roles.defaults import DEFAULTS

    from ..bundle.build import build_bundle
    from ..inventoryfile import load_inventory
    from ..paths import PROJECT_ROOT, state_dir

    inventory = load_inventory(args.inventory)
    hosts = [(host.name, {**DEFAULTS, **host.data.dict()}) for host in inventory]
    if not hosts:
        raise ValueError(f"{args.inventory} lists no hosts")
    spec = inventory_bundle_spec(inventory)
    cache = _one(hosts, "deepfleet_cache_dir")
    model_keys = _one(hosts, "model_keys_dir")
    manifest = build_bundle(spec, args.out, signer_dir=args.signing_key_dir or state_dir() / "bundle-keys",
                            cache=control_path(cache, "deepfleet_cache_dir"), runtime_src=PROJECT_ROOT / "runtime",
                            model_keys_dir=control_path(model_keys, "model_keys_dir") if model_keys else None,
                            lock_path=args.lock, log=log,
                            signing_key_valid_days=args.signing_key_valid_days)
    size = sum(entry["size"] for entry in manifest["files"].values())
    print(f"bundle {args.out}: {len(manifest['files'])} files, {size / 1e9:.2f} GB, signed by {manifest['signer']}")
    print(f"  packages for {', '.join(target.key for target in spec.os_targets)}; "
          f"wheelhouses {len(spec.wheels)}; images {len(spec.images) + len(spec.image_tarballs)}; "
          f"models {', '.join(model.name for model in spec.models) or 'none'}")
    print(f"  lock: {args.out / 'lock.json'} (keep it: `--lock` builds these exact bytes again)")
    return 0


def _one(hosts: list[tuple[str, dict]], setting: str):
    values = {str(settings[setting]) for _, settings in hosts if settings[setting]}
    if len(values) > 1:
        raise ValueError(f"the hosts name different {setting}s ({', '.join(sorted(values))}); a bundle is built "
                         "from one")
    return values.pop() if values else None


def verify_command(args) -> int:
    from ..bundle import verify_bundle
    from ..paths import state_dir

    trusted = args.trusted_key or state_dir() / "bundle-keys" / "bundle-signing.asc"
    bundle = verify_bundle(args.bundle_dir, trusted, log)
    lock = bundle.lock
    models = ", ".join(f"{name}@{entry['release']}" for name, entry in sorted(lock["models"].items()))
    print(f"bundle {args.bundle_dir} verified: signature by {bundle.signer} (trusted key {trusted}) and all "
          f"{len(bundle.manifest['files'])} files ({bundle.size / 1e9:.2f} GB)")
    print(f"  packages for {', '.join(sorted(lock['os'])) or 'no OS'}; wheelhouses {', '.join(sorted(lock['wheelhouses']))}; "
          f"images {', '.join(sorted(lock['images'])) or 'none'}; models {models or 'none'}")
    return 0
