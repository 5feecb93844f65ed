"""Hosts install the wheelhouse in pip's hash-checking mode: every wheel is pinned to the SHA-256
the control machine recorded (offline: the bundle's signed manifest), and a swapped wheel is
refused naming the expected hash. Real pip, into a real venv, from wheels written here."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile

from deepfleet.wheelhouse import hashed_requirements


def _wheel(directory, name, version, requires=(), extra=None, payload="x = 1\n"):
    path = directory / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if extra:
        metadata += f"Provides-Extra: {extra}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{name}/__init__.py": payload, f"{dist}/METADATA": metadata,
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b'=').decode()}"
                     f",{len(c.encode())}\n" for p, c in files.items()) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for p, c in {**files, f"{dist}/RECORD": record}.items():
            archive.writestr(p, c)
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pip(venv, *args):
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--isolated", "--disable-pip-version-check",
                           *args], capture_output=True, text=True)


def test_the_wheelhouse_installs_only_the_recorded_hashes(tmp_path):
    deps, rt = tmp_path / "deps", tmp_path / "runtime"
    deps.mkdir(), rt.mkdir()
    helper = _wheel(deps, "helper_lib", "2.0+cpu")
    runtime = _wheel(rt, "deepfleet_runtime", "0.1.0", requires=['helper-lib==2.0+cpu; extra == "transformers"'],
                     extra="transformers")
    manifest = {helper.name: _sha(helper)}
    full, runtime_only = hashed_requirements(manifest, str(runtime), _sha(runtime), ["transformers"])
    assert f"--hash=sha256:{_sha(helper)}" in full and "helper_lib==2.0+cpu" in full
    assert f"{runtime}[transformers] --hash=sha256:{_sha(runtime)}" in full
    assert runtime_only == f"{runtime} --hash=sha256:{_sha(runtime)}\n"
    (tmp_path / "req.txt").write_text(full)
    (tmp_path / "rt.txt").write_text(runtime_only)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--isolated", "--python", str(venv / "bin" / "python"), "--version"],
                   check=True, capture_output=True)

    def install(*args):
        return subprocess.run([sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check",
                               "--python", str(venv / "bin" / "python"), "install", "--quiet", "--no-index",
                               *args], capture_output=True, text=True)

    ok = install("--require-hashes", "--find-links", str(deps), "-r", str(tmp_path / "req.txt"))
    assert ok.returncode == 0, ok.stderr
    again = install("--require-hashes", "--no-deps", "--force-reinstall", "-r", str(tmp_path / "rt.txt"))
    assert again.returncode == 0, again.stderr

    # Someone swaps the dependency wheel on the host after it was checked: pip refuses, naming both hashes.
    recorded = _sha(helper)
    _wheel(deps, "helper_lib", "2.0+cpu", payload="import os; os.system('evil')\n")
    refused = install("--ignore-installed", "--require-hashes", "--find-links", str(deps), "-r",
                      str(tmp_path / "req.txt"))
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr and recorded in refused.stderr and _sha(helper) in refused.stderr
