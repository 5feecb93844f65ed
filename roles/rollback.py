"""The rollback deploy (deploys/rollback.py; `deepfleet rollback`, and the rollout's way back): switch
a host to an earlier runtime release, its model verified first (`deepfleet-runtime release
rollback` on the host), and restart the runtime on it.

A release's runtime is a venv (systemd mode: the unit runs `releases/current/venv`, so a restart
is enough) or an image (Docker mode: a container keeps the image it was created from). In Docker
mode the deploy first asks which release the rollback goes to (`release rollback --dry-run`): when
its image is not the one the container runs, the container is recreated on it (its other settings
the inventory's, as the deploy gives them) after the switch; when that image is gone from the
host, the host fails before anything is switched.
"""

from __future__ import annotations

import json
import shlex

from pyinfra import host
from pyinfra.api import FactBase, QuoteString, StringCommand, deploy
from pyinfra.facts.docker import DockerContainer, DockerImage
from pyinfra.operations import server

from .defaults import DEFAULTS
from .gpu_facts import has_nvidia_gpu
from .model import host_keys_dir
from .release import releases_dir
from .runtime import ready_command, role_settings, runtime_container_args
from .runtime_container import CONTAINER, run_container


class RollbackTarget(FactBase):
    """The release a rollback would switch to, {"release", "previous", "model", "runtime"}
    (`deepfleet-runtime release rollback --dry-run`), or None when there is none: the rollback
    itself then fails, naming the reason."""

    def command(self, cli: str, root: str, to: str | None = None) -> str:
        target = f" --to {shlex.quote(to)}" if to else ""
        return f"{shlex.quote(cli)} release rollback --dry-run --root {shlex.quote(root)}{target} 2>/dev/null || true"

    def process(self, output):
        text = "\n".join(output).strip()
        return json.loads(text) if text else None


def image_to_run(cli: str, to: str | None) -> str | None:
    """Docker mode: the image of the release a rollback goes to, when the container does not run it
    (then it must be recreated on it); None when a restart is enough."""
    target = host.get_fact(RollbackTarget, cli=cli, root=releases_dir(), to=to) or {}
    image = (target.get("runtime") or {}).get("image")
    container = (host.get_fact(DockerContainer, object_id=CONTAINER) or [None])[0]
    if not image or (container and container["Config"].get("Image") == image):
        return None
    return image


@deploy("deepfleet release rollback", data_defaults=DEFAULTS)
def rollback(to: str | None = None):
    """Switch each host back to the runtime release active before the current one (or `to`: a
    release id, or a model release id), its model verified first, and restart the runtime on it
    (Docker mode: on that release's image); a host with nothing to go back to fails with the
    reason, changing nothing."""
    data = host.data
    cli = f"{data.deepfleet_home}/venv/bin/deepfleet-runtime"
    docker = data.runtime_mode == "docker"
    image = image_to_run(cli, to) if docker else None
    if image and not host.get_fact(DockerImage, object_id=image):
        fix = (f"the runtime image {image} of the release to go back to is no longer on this host; nothing was "
               f"switched. Load or build it again (`deepfleet up` with the inventory of that release does), "
               "or roll back to another kept release (--to)")
        server.shell(name=f"Runtime image {image} of the release to go back to", commands=[
            f"echo {shlex.quote(fix)} >&2; exit 1"])
        return
    target = ["--to", to] if to else []
    server.shell(
        name=f"Switch the runtime back to {to or 'the previous release'} (its model verified first)",
        commands=[StringCommand(cli, "release", "rollback", "--root", QuoteString(releases_dir()), "--keys-dir",
                                QuoteString(host_keys_dir()), "--group", data.deepfleet_group, "--model-keep",
                                str(data.model_keep_releases),
                                "--config", QuoteString(f"{data.deepfleet_config_dir}/runtime.yaml"), *target)])
    if image:
        run_container(name=f"Runtime container {CONTAINER} on the release's image {image}", user=data.deepfleet_user,
                      args=runtime_container_args(role_settings(), image, has_nvidia_gpu()))
        server.shell(name="Wait until the runtime container is ready", commands=[ready_command(unit=None)])
        return
    restart = f"docker restart {CONTAINER}" if docker else "systemctl restart deepfleet-runtime.service"
    server.shell(name="Restart the runtime on the release and wait until it is ready",
                 commands=[restart, ready_command(unit=None if docker else "deepfleet-runtime")])
