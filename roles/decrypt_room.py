"""Room in memory for the decrypted model: checked against the host's RAM before any push.

The vllm and llamacpp engines load from files, so the runtime decrypts the whole release into
memory first (modelstore/tmpfs.py): the unit's RuntimeDirectory under /run, whose tmpfs the
distributions size at a fraction of RAM (Debian and Ubuntu: 10%, by their initramfs defaults), or
with `runtime_decrypt_tmpfs_size` a tmpfs of its own of that size. vLLM's copy lives as long as
the engine; llama.cpp reads its own copy of the weights into RAM before the file copy is wiped.
The transformers engine decrypts straight into its own memory and is not checked here.
"""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import FactBase

from .common import RoleError

GIB = 1 << 30
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
SIZE = re.compile(r"^(\d+)([kmgt]?)$|^(\d{1,3})%$", re.IGNORECASE)


class HostMemory(FactBase):
    """{"ram_bytes": MemTotal, "run_bytes": the size of the filesystem on /run} of the host."""

    def command(self) -> str:
        # MemTotal in KiB as the kernel writes it: awk's own arithmetic prints big numbers rounded (2.5276e+10)
        return "awk '/^MemTotal:/ {print $2}' /proc/meminfo; df -B1 --output=size /run | tail -n 1"

    def process(self, output):
        ram_kib, run = (int(line.strip()) for line in list(output)[:2])
        return {"ram_bytes": ram_kib * 1024, "run_bytes": run}


def tmpfs_bytes(size: str, ram_bytes: int) -> int:
    """Bytes of a tmpfs size= value ("200G", "512m", "50%"); RoleError naming the setting when it is none."""
    match = SIZE.match(str(size).strip())
    if not match:
        raise RoleError(f"runtime_decrypt_tmpfs_size is {size!r}; write a size like \"200G\", \"512M\" or \"50%\" "
                        "(of the host's RAM)")
    if match.group(3):
        return ram_bytes * int(match.group(3)) // 100
    return int(match.group(1)) * UNITS[match.group(2).lower()]


def decrypt_room_problem(engine: str, release_bytes: int, tmpfs_size: str | None, memory: dict,
                         mode: str = "systemd") -> str | None:
    """Why the decrypted release of `release_bytes` would not fit in memory on this host, or None."""
    if engine not in ("vllm", "llamacpp"):
        return None
    ram = memory["ram_bytes"]
    if tmpfs_size:
        room, where = tmpfs_bytes(tmpfs_size, ram), f"runtime_decrypt_tmpfs_size {tmpfs_size!r} gives it "
    elif mode == "docker":
        room, where = ram // 2, "the container's tmpfs has the kernel's default size, half the RAM: "
    else:
        room, where = memory["run_bytes"], "the unit's RuntimeDirectory is on /run, a tmpfs of "
    where += _gib(room)
    if release_bytes > room:
        return (f"the {engine} engine decrypts the release ({_gib(release_bytes)}) into memory, and {where}: "
                f"{_gib(release_bytes - room)} short. Set runtime_decrypt_tmpfs_size to at least "
                f"\"{-(-release_bytes * 11 // 10 // GIB)}G\" (the host has {_gib(ram)} of RAM)")
    needed = release_bytes * (2 if engine == "llamacpp" else 1)
    what = ("the decrypted file and llama.cpp's own copy of the weights" if engine == "llamacpp"
            else "vLLM's decrypted copy, held as long as it runs")
    if needed > ram * 9 // 10:
        return (f"{what} need {_gib(needed)} of RAM, and the host has {_gib(ram)} (90% usable): "
                f"{_gib(needed - ram * 9 // 10)} short. Use a host with more RAM or a smaller (quantised) model")
    return None


def check_decrypt_room(release_bytes: int) -> None:
    """Refuse, before any push, a release the current host could not hold decrypted in memory."""
    data = host.data
    if data.runtime_engine not in ("vllm", "llamacpp"):
        return
    problem = decrypt_room_problem(data.runtime_engine, release_bytes, data.runtime_decrypt_tmpfs_size,
                                   host.get_fact(HostMemory), data.runtime_mode)
    if problem:
        raise RoleError(f"{host.name}: {problem}; nothing was pushed")


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.1f} GiB"
