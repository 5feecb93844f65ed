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
    """The host's python3: {"python": "3.11", "machine": "x86_64", "glibc": "2.36"}, or None if absent."""

    def requires_command(self, *args, **kwargs) -> str:
        return "python3"

    def command(self) -> str:
        return f'python3 -c "{_PROBE}"'

    def process(self, output):
        return json.loads("\n".join(output))


class JsonFile(FactBase):
    """A JSON file's parsed content, or None when the file does not exist (deepfleet's markers)."""

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return f"test -f {quoted} && cat {quoted} || true"

    def process(self, output):
        text = "\n".join(output).strip()
        return json.loads(text) if text else None
