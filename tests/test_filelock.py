"""The cache lock lets other greenlets run while it waits (pyinfra prepares hosts in greenlets)."""

from __future__ import annotations

import subprocess
import sys

# Two greenlets, as pyinfra runs two hosts' deploy code: the first holds the lock while it waits on
# something cooperative (a subprocess, here a gevent sleep); the second asks for the lock meanwhile.
# A blocking flock would stop the whole process, the holder included: this would never finish.
_TWO_GREENLETS = """
from gevent import monkey; monkey.patch_all()
import sys, gevent
from pathlib import Path
from deepfleet.filelock import exclusive_lock
path, order = Path(sys.argv[1]), []
def holder():
    with exclusive_lock(path):
        order.append("holder in"); gevent.sleep(0.3); order.append("holder out")
def waiter():
    gevent.sleep(0.05)
    with exclusive_lock(path):
        order.append("waiter in")
gevent.joinall([gevent.spawn(holder), gevent.spawn(waiter)])
print(",".join(order))
"""


def test_a_waiting_greenlet_lets_the_holder_finish(tmp_path):
    result = subprocess.run([sys.executable, "-c", _TWO_GREENLETS, str(tmp_path / ".lock")], capture_output=True,
                            text=True, timeout=30)
    assert result.stdout.strip() == "holder in,holder out,waiter in", result.stderr
