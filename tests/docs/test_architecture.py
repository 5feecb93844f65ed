"""docs/ARCHITECTURE.md places every folder and module of the tree."""

from __future__ import annotations

import re

from deepfleet.paths import PROJECT_ROOT

PACKAGES = ("inventories", "deploys", "roles", "deepfleet", "deepfleet/commands", "deepfleet/bundle", "bench",
            "runtime/deepfleet_runtime", "runtime/deepfleet_runtime/commands", "runtime/deepfleet_runtime/engines",
            "runtime/deepfleet_runtime/gateway", "runtime/deepfleet_runtime/modelstore")
FOLDERS = ("inventories/", "deploys/", "roles/", "templates/", "deepfleet/", "deepfleet/bundle/", "bench/", "tests/",
           ".ci/", "runtime/deepfleet_runtime/")


def test_every_module_and_folder_is_placed():
    text = (PROJECT_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`([^`]+)`", text))
    words = {word for name in named for word in re.split(r"[\s,{}/]+|\.py$", name)}
    missing = [f"{package}/{path.stem}" for package in PACKAGES for path in sorted((PROJECT_ROOT / package).glob("*.py"))
               if path.stem != "__init__" and path.stem not in words]
    missing += [folder for folder in FOLDERS if f"`{folder}`" not in text]
    assert missing == []
