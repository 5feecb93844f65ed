"""The site deploy: a fresh host to a serving, secured endpoint.

    pyinfra inventories/<yours>.py deploys/site.py --dry --diff   # see every change first
    pyinfra inventories/<yours>.py deploys/site.py -y             # apply

Every setting the roles read is listed, with its default, in roles/defaults.py.
"""

from roles.base import base
from roles.firewall import firewall
from roles.gateway import gateway
from roles.model import model
from roles.runtime import runtime

base()
firewall()  # closed before anything serves (off unless firewall_enabled)
model()
runtime()
gateway()
