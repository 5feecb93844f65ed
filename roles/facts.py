"""Facts deepfleet's roles read from hosts, beyond pyinfra's own."""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase

_PROBE = (
    "import json, platform, sys; "
    "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'machine': platform.machine(), "
    "'glibc': platform.libc_ver()[1]}))"
)


class HostPython(FactBase):
    """A Python on the host (`python`: the command, e.g. "python3.11"): {"python": "3.11",
    "machine": "x86_64", "glibc": "2.36"}, or None while it is not installed."""

    def requires_command(self, python: str) -> str:
        return python

    def command(self, python: str) -> str:
        return f'{shlex.quote(python)} -c "{_PROBE}"'

    def process(self, output):
        return json.loads("\n".join(output))


class InterfaceAddresses(FactBase):
    """The IP addresses of one network interface (["10.0.3.21", "fd00::21"]), or None when the host
    has no such interface."""

    def command(self, interface: str) -> str:
        return f"ip -o addr show dev {shlex.quote(interface)} 2>/dev/null || echo no-such-interface"

    @staticmethod
    def default() -> list:
        return []

    def process(self, output):
        if [line.strip() for line in output] == ["no-such-interface"]:
            return None
        fields = [line.split() for line in output]
        return [field[3].split("/")[0] for field in fields if len(field) > 3 and field[2] in ("inet", "inet6")]


class JsonFile(FactBase):
    """A JSON file's parsed content, or None when the file does not exist (deepfleet's markers)."""

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return f"test -f {quoted} && cat {quoted} || true"

    def process(self, output):
        text = "\n".join(output).strip()
        return json.loads(text) if text else None


_MODEL_STATE_PROBE = r"""
import json, os, sys
models, name, release = sys.argv[1:4]
def load(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
def sizes(root):
    found = {}
    for directory, _, files in os.walk(root):
        for file_name in files:
            path = os.path.join(directory, file_name)
            found[os.path.relpath(path, root)] = os.path.getsize(path)
    return found
final = os.path.join(models, name + "@" + release)
probe = models
while not os.path.isdir(probe):
    probe = os.path.dirname(probe)
disk = os.statvfs(probe)
try:
    current = os.readlink(os.path.join(models, name + "@current")).rsplit("@", 1)[1]
except OSError:
    current = None
kept = [entry.rsplit("@", 1)[1] for entry in os.listdir(models) if entry.startswith(name + "@")
        and not os.path.islink(os.path.join(models, entry))  # <name>@current is no release of its own
        and os.path.isfile(os.path.join(models, entry, ".deepfleet-complete.json"))] if os.path.isdir(models) else []
print(json.dumps({
    "complete": load(os.path.join(final, ".deepfleet-complete.json")),
    "kek_id": (load(os.path.join(final, "key.json")) or {}).get("kek_id"),
    "staged": sizes(os.path.join(models, "." + name + "@" + release + ".partial")),
    "other_partials": sorted(entry for entry in os.listdir(models) if entry.startswith("." + name + "@")
                             and entry != "." + name + "@" + release + ".partial") if os.path.isdir(models) else [],
    "current": current,
    "kept": sorted(kept),
    "kept_bytes": {release: sum(sizes(os.path.join(models, name + "@" + release)).values()) for release in kept},
    "free_bytes": disk.f_bavail * disk.f_frsize,
}))
"""


class ModelReleaseState(FactBase):
    """One model release on a host, from the model role's point of view:
    {"complete": marker or None, "kek_id": of its key.json, "staged": {path: bytes} of a push in
    progress, "other_partials": other unfinished pushes, "current": release served, "kept":
    complete releases, "kept_bytes": {release: bytes} of those, "free_bytes": space left where the
    models live}."""

    def requires_command(self, *args, **kwargs) -> str:
        return "python3"

    def command(self, models_dir: str, model_name: str, release: str) -> str:
        return " ".join(shlex.quote(part) for part in ("python3", "-c", _MODEL_STATE_PROBE, models_dir, model_name, release))

    def process(self, output):
        return json.loads("\n".join(output))

    @staticmethod
    def default():
        """What a host without python3 yet (a dry run before the base role) holds: nothing."""
        return {"complete": None, "kek_id": None, "staged": {}, "other_partials": [], "current": None,
                "kept": [], "kept_bytes": {}, "free_bytes": None}


class DnfEnabledRepos(FactBase):
    """The ids of the enabled dnf repositories (e.g. ["appstream", "baseos", "crb", "extras"]); [] without dnf."""

    def requires_command(self) -> str:
        return "dnf"

    def command(self) -> str:
        return "dnf -q repolist --enabled 2>/dev/null | awk 'NR > 1 {print $1}'"

    @staticmethod
    def default() -> list:
        return []

    def process(self, output):
        return sorted(line.strip() for line in output if line.strip())


_CLOCK_PROBE = ("if command -v chronyc >/dev/null 2>&1; then echo source=chrony; chronyc -c tracking 2>&1 || true; "
                "elif command -v timedatectl >/dev/null 2>&1; then echo source=timesyncd; "
                "timedatectl timesync-status 2>&1 || true; else echo source=none; fi")
_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}


class ClockOffset(FactBase):
    """How far the host's clock is from its time servers: {"source": "chrony" | "timesyncd" | None,
    "offset_s": seconds (None when not synchronised), "detail": what the tool said}. chrony's
    `chronyc -c tracking` CSV (field 5: the system time's offset; the last: the leap status, "Not
    synchronised" before a source answered), else systemd-timesyncd's `timedatectl timesync-status`."""

    def command(self) -> str:
        return _CLOCK_PROBE

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        source = lines[0].split("=", 1)[1] if lines and lines[0].startswith("source=") else "none"
        rest = lines[1:]
        if source == "chrony":
            fields = rest[0].split(",") if rest else []
            if len(fields) >= 14:
                synced = fields[-1] != "Not synchronised"
                return {"source": source, "offset_s": float(fields[4]) if synced else None,
                        "detail": f"chrony: reference {fields[1] or fields[0]}, stratum {fields[2]}, leap {fields[-1]}"}
            return {"source": source, "offset_s": None, "detail": "chronyc: " + " ".join(rest)[-200:]}
        if source == "timesyncd":
            found = dict(line.split(":", 1) for line in rest if ":" in line)
            offset = (found.get("Offset") or "").strip()
            value = None
            for unit, scale in sorted(_UNITS.items(), key=lambda item: -len(item[0])):
                if offset.endswith(unit):
                    value = float(offset[: -len(unit)]) * scale
                    break
            detail = (f"systemd-timesyncd: server {found['Server'].strip()}" if "Server" in found
                      else "systemd-timesyncd: " + " ".join(rest)[-200:])
            return {"source": source, "offset_s": value, "detail": detail}
        return {"source": None, "offset_s": None, "detail": "neither chrony nor systemd-timesyncd is installed"}
