"""The model role: push a model directory to the host, content-addressed by its manifest.

Files land in `<deepfleet_home>/models/<name>@<release>/`, where the release id is derived
from the manifest of file hashes, so a changed model is a new directory and the runtime's config
(and thus a restart) follows. Encryption and signed manifests slot in here (model supply chain).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from deepfleet.modelsource import local_manifest, release_id

from .common import control_path
from .defaults import DEFAULTS
from .transfer import push_files


def remote_model_dir() -> str:
    """Where this host's model release lives (read by the runtime role for runtime.yaml)."""
    source = control_path(host.data.model_source, "model_source")
    manifest = local_manifest(source, control_path(host.data.deepfleet_cache_dir, "deepfleet_cache_dir"))
    return f"{host.data.deepfleet_home}/models/{host.data.model_name}@{release_id(manifest)}"


@deploy("deepfleet model", data_defaults=DEFAULTS)
def model():
    """Push the model in `model_source` to the host (skipped when the release is already there)."""
    source = control_path(host.data.model_source, "model_source")
    manifest = local_manifest(source, control_path(host.data.deepfleet_cache_dir, "deepfleet_cache_dir"))
    push_files(
        name=f"Model {host.data.model_name}@{release_id(manifest)}",
        files={name: str(source / name) for name in manifest},
        manifest=manifest,
        dest_dir=remote_model_dir(),
        user="root",
        group=host.data.deepfleet_group,
    )
