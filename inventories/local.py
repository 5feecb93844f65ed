"""The embedded default: disposable local test hosts started by `deepfleet demo` (or the tests).

Hosts, their SSH settings and per-host ports come from the hosts file that deepfleet writes
when it starts them: `<state>/demo/inventory.json` (<state>: $DEEPFLEET_HOME, else .deepfleet/ in the
project), or the file named by DEEPFLEET_HOSTS_FILE.
Its optional "groups" ({"gateways": [...], "gpu_nodes": [...]}) give the hosts fleet roles.
"""

import json
import os
from pathlib import Path

_state = Path(os.environ.get("DEEPFLEET_HOME") or Path(__file__).resolve().parent.parent / ".deepfleet")
_hosts_file = Path(os.environ.get("DEEPFLEET_HOSTS_FILE") or _state / "demo" / "inventory.json")
if not _hosts_file.exists():
    raise SystemExit(f"{_hosts_file} does not exist: start the local host with `deepfleet demo` first")

_hosts = json.loads(_hosts_file.read_text())
local = [tuple(entry) for entry in _hosts["hosts"]]
for _group, _names in _hosts.get("groups", {}).items():
    globals()[_group] = list(_names)
