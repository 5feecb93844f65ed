"""The runtime's and the gateway's processes never write their memory (keys, weights, prompts) to a core dump."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import ctypes, os, resource
from deepfleet_runtime.privatememory import keep_memory_private
keep_memory_private()
libc = ctypes.CDLL(None, use_errno=True)
print(libc.prctl(3, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE))  # PR_GET_DUMPABLE
os.setresuid(65534, 65534, 65534)  # as the services run: without root's CAP_SYS_RESOURCE
try:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("raised")
except (ValueError, OSError):
    print("stays 0")
"""


def test_a_private_process_is_not_dumpable_and_cannot_raise_its_core_limit_again():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["0 (0, 0)", "stays 0"]


def test_the_serve_and_gateway_commands_make_their_process_private(monkeypatch):
    from deepfleet_runtime.commands import gateway, serve

    calls = []
    monkeypatch.setattr("deepfleet_runtime.privatememory.keep_memory_private", lambda: calls.append(1))
    for command in (serve, gateway):
        try:
            command.run(type("Args", (), {"config": "/nonexistent/config.yaml"})())
        except Exception:
            pass  # the config is missing; what matters is what ran before it was read
    assert calls == [1, 1]
