"""Describe each host for the fleet workflows, changing nothing: its jobs in the fleet (gateway,
replica, Ray group), how to log in (the ssh command pyinfra's own login amounts to), the settings
`deepfleet rollout` and `deepfleet status` read. One JSON file per host in $DEEPFLEET_DESCRIBE_OUT.

    DEEPFLEET_DESCRIBE_OUT=/tmp/fleet pyinfra inventories/fleet.py deploys/describe.py --dry
"""

import json
import os
from pathlib import Path

from pyinfra import host

from deepfleet.remote import ssh_argv
from roles.settings import check_settings
from roles.topology import describe

check_settings()
out = Path(os.environ["DEEPFLEET_DESCRIBE_OUT"])
record = describe(host) | {"ssh": ssh_argv(host.connector.data, host.name)}
(out / f"{host.name}.json").write_text(json.dumps(record))
