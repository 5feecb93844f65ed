"""Where deepfleet keeps things on the control machine."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SITE_DEPLOY = PROJECT_ROOT / "deploys" / "site.py"
ROLLBACK_DEPLOY = PROJECT_ROOT / "deploys" / "rollback.py"
LOCAL_INVENTORY = PROJECT_ROOT / "inventories" / "local.py"


def state_dir() -> Path:
    """The control-side state directory: $DEEPFLEET_HOME, else .deepfleet/ in the project."""
    return Path(os.environ.get("DEEPFLEET_HOME") or PROJECT_ROOT / ".deepfleet").resolve()


def cache_dir() -> Path:
    """Rebuildable things (test host image debs, wheelhouses, the tiny model, hash caches):
    $DEEPFLEET_CACHE, else <state>/cache."""
    return Path(os.environ.get("DEEPFLEET_CACHE") or state_dir() / "cache").resolve()
