"""The runtime's wheelhouses in a bundle, built by deepfleet.wheelhouse and pinned by the lock.

In the bundle they keep the wheelhouse's own layout, so the runtime role installs them unchanged:
    wheels/deps-<digest>/      dependency wheels + .manifest.json (digest = the manifest's, as on hosts)
    wheels/runtime-<digest>/   the deepfleet-runtime wheel (digest of its sources)
Building from a lock takes the wheelhouse cache when it holds exactly the locked wheels, else
downloads exactly those files (`pip download --require-hashes`); a runtime wheel that differs
from the lock's means the runtime's sources changed, and is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..digests import sha256_file
from ..wheelhouse import MANIFEST, TargetPlatform, Wheelhouse, build_wheelhouse, file_manifest
from .spec import WheelTarget


class WheelError(RuntimeError):
    """Wheels could not be had as the lock pins them; the message says why and what to do."""


def requirement_for(extras: tuple[str, ...]) -> str:
    return f"deepfleet-runtime[{','.join(extras)}]" if extras else "deepfleet-runtime"


def platform_of(target: WheelTarget) -> TargetPlatform:
    return TargetPlatform(target.python, target.machine, target.glibc, target.accelerator)


def lock_entry(wheelhouse: Wheelhouse, target: WheelTarget) -> dict:
    """What the lock records of a built wheelhouse."""
    return {"python": target.python, "machine": target.machine, "glibc": target.glibc, "extras": list(target.extras),
            "requirement": wheelhouse.requirement,
            "deps": json.loads((wheelhouse.deps_dir / MANIFEST).read_text()),
            "runtime": {"file": wheelhouse.runtime_wheel.name, "sha256": sha256_file(wheelhouse.runtime_wheel),
                        "source_digest": wheelhouse.runtime_digest}}


def build_for(target: WheelTarget, cache: Path, runtime_src: Path, pinned: dict | None, log
              ) -> tuple[dict, Path, Path]:
    """(lock entry, dependency wheel directory, runtime wheel) of `target`'s wheelhouse, built or taken
    from the cache; with `pinned` (the lock's entry) exactly those wheels, downloaded by hash if need be."""
    wheelhouse = build_wheelhouse(platform_of(target), cache / "wheelhouse", runtime_src, extras=target.extras, log=log)
    entry = lock_entry(wheelhouse, target)
    if pinned is None or entry == pinned:
        return entry, wheelhouse.deps_dir, wheelhouse.runtime_wheel
    if entry["runtime"]["sha256"] != pinned["runtime"]["sha256"]:
        raise WheelError(f"wheels {target.key}: the deepfleet-runtime wheel built from {runtime_src} differs from "
                         f"the lock's (sources {entry['runtime']['source_digest']}, locked "
                         f"{pinned['runtime']['source_digest']}); build from the checkout the lock was made "
                         "with, or without --lock")
    return pinned, _download_locked(target, pinned, cache / "bundle-wheels" / target.key, log), wheelhouse.runtime_wheel


def _download_locked(target: WheelTarget, pinned: dict, dest: Path, log) -> Path:
    manifest = dest / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == pinned["deps"]:
        return dest
    log(f"downloading the {len(pinned['deps'])} locked wheels for {target.key}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".locked-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text("".join(f"{_name_version(name)} --hash=sha256:{digest}\n"
                                        for name, digest in sorted(pinned["deps"].items())))
        wheels = Path(scratch) / "wheels"
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                                 "--dest", str(wheels), *platform_of(target).pip_args(), "-r", str(requirements)],
                                capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        if result.returncode != 0:
            raise WheelError(f"wheels {target.key}: downloading the locked wheels failed:\n"
                             + "\n".join(result.stderr.strip().splitlines()[-10:]))
        if file_manifest(wheels) != pinned["deps"]:
            raise WheelError(f"wheels {target.key}: pip fetched other files than the lock names")
        (wheels / MANIFEST).write_text(json.dumps(pinned["deps"], indent=1, sort_keys=True) + "\n")
        if dest.exists():
            os.rename(dest, Path(scratch) / "old")
        os.rename(wheels, dest)
    return dest


def _name_version(wheel: str) -> str:
    name, version = wheel.split("-")[:2]
    return f"{name}=={version}"


def _manifest_bytes(entry: dict) -> bytes:
    """The dependency manifest exactly as deepfleet.wheelhouse writes it (its digest names the directory)."""
    return (json.dumps(entry["deps"], indent=1, sort_keys=True) + "\n").encode()


def place(entry: dict, deps_dir: Path, runtime_wheel: Path, bundle: Path, link) -> None:
    """Put one wheelhouse into the bundle (wheels/deps-<digest>/, wheels/runtime-<digest>/), once."""
    wheelhouse = bundle_wheelhouse(bundle, entry)
    if not wheelhouse.deps_dir.exists():
        wheelhouse.deps_dir.mkdir(parents=True)
        for name in entry["deps"]:
            link(deps_dir / name, wheelhouse.deps_dir / name)
        (wheelhouse.deps_dir / MANIFEST).write_bytes(_manifest_bytes(entry))
    if not wheelhouse.runtime_wheel.exists():
        wheelhouse.runtime_wheel.parent.mkdir(parents=True, exist_ok=True)
        link(runtime_wheel, wheelhouse.runtime_wheel)


def bundle_wheelhouse(bundle: Path, entry: dict) -> Wheelhouse:
    """The Wheelhouse a bundle holds for one lock entry (what the runtime role pushes and installs)."""
    deps_digest = hashlib.sha256(_manifest_bytes(entry)).hexdigest()[:16]
    runtime = entry["runtime"]
    wheel = bundle / "wheels" / f"runtime-{runtime['source_digest']}" / runtime["file"]
    return Wheelhouse(bundle / "wheels" / f"deps-{deps_digest}", deps_digest, wheel, runtime["source_digest"],
                      entry["requirement"])
