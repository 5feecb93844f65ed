"""Switch each host back to its previous model release (or DEEPFLEET_ROLLBACK_TO), verified first,
and restart the runtime on it. Run by `deepfleet rollback INVENTORY [--to RELEASE]`."""

import os

from roles.model import rollback
from roles.settings import check_settings

check_settings()
rollback(to=os.environ.get("DEEPFLEET_ROLLBACK_TO") or None)
