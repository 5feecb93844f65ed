"""Switch each host back to its previous runtime release (or DEEPFLEET_ROLLBACK_TO: a release id,
or a model release id), its model verified first, and restart the runtime on it. Run by
`deepfleet rollback INVENTORY [--to RELEASE]`."""

import os

from roles.rollback import rollback
from roles.settings import check_settings

check_settings()
rollback(to=os.environ.get("DEEPFLEET_ROLLBACK_TO") or None)
