"""Docker mode of the runtime role (`runtime_mode: docker`): the engine runs in a container.

The image comes from one of two places (`runtime_image_source`):
    build    templates/Dockerfile.runtime.j2 + a wheelhouse for the base image's Python, pushed to
             <deepfleet_home>/images/runtime-<digest>/ and built there by the host's dockerd;
             the tag is that digest, so a changed Dockerfile or wheel set is a new image.
    tarball  a `docker save` file (`runtime_image_tarball`) pushed and `docker load`ed: for hosts
             that reach no registry; its tag is read from the tarball's manifest.
The container: host networking (the runtime listens on 127.0.0.1 only), `--gpus` on NVIDIA
hosts, docker's restart policy, shm and memlock limits, read-only root, runtime.yaml, the models
directory (so `<name>@current` resolves to its release) and the model keys mounted read-only.
Encrypted releases get what the systemd unit gives them (START_SCRIPT): the keys copied into a
private tmpfs, then the engine as the host's service account with no capabilities. It is
recreated only when its spec (a digest kept in a label) changes, restarted when runtime.yaml or
the current release changes, and the deploy waits until it is ready. The gateway stays a systemd
service on the host.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import tarfile
from collections.abc import Mapping
from pathlib import Path

from pyinfra import host
from pyinfra.api import MaskString, QuoteString, StringCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.api.util import get_template
from pyinfra.facts.docker import DockerContainer, DockerImage
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from deepfleet.digests import sha256_file
from deepfleet.wheelhouse import Wheelhouse, hashed_requirements

from .common import RoleError, control_path, template
from .hostos import RuntimePython
from .offline import wheelhouse_hashes
from .proxy import build_args as proxy_build_args
from .transfer import push_files

CONTAINER = "deepfleet-runtime"
IMAGE_REPOSITORY = "deepfleet-runtime"
IMAGE_VENV = "/opt/deepfleet/venv"  # inside the image
SPEC_LABEL = "deepfleet.spec"
# The classic builder leaves the Dockerfile's wheel-installing stage as a dangling image; it carries
# this label, so exactly those (and nothing else of the host's) are pruned after a build.
PRUNE_BUILD_STAGES = ["docker", "image", "prune", "--force", "--filter", "label=deepfleet.stage=runtime-build"]
RUN_AS_ENV = "DEEPFLEET_RUN_AS"  # "<uid>:<gid>" of the host's service account, resolved by the host's shell
# What the systemd unit's ExecStartPre=+ and User= do, done by the container at each start: root,
# holding only CAP_CHOWN/SETUID/SETGID, copies the model keys (root 0400 on the host, mounted
# read-only at $1) into the private tmpfs $RUNTIME_DIRECTORY (0700, memory only, new at each start),
# gives that to the service account, and becomes it for good (setpriv): the engine runs without
# capabilities, and no one else in the container can read the keys.
START_SCRIPT = """set -eu
keys_from=$1; shift
umask 077
mkdir "$RUNTIME_DIRECTORY/keys"
cp "$keys_from"/* "$RUNTIME_DIRECTORY/keys/"
chmod 0400 "$RUNTIME_DIRECTORY/keys"/*
chown -R "$DEEPFLEET_RUN_AS" "$RUNTIME_DIRECTORY"
exec setpriv --reuid "${DEEPFLEET_RUN_AS%:*}" --regid "${DEEPFLEET_RUN_AS#*:}" --clear-groups deepfleet-runtime "$@"
"""


def dockerfile(settings: Mapping, base_image: str, gpu: bool, python: RuntimePython, wheelhouse: Wheelhouse,
               config_path: str) -> str:
    """templates/Dockerfile.runtime.j2 rendered for this wheelhouse and base (whose OS has `python`)."""
    return get_template(template("Dockerfile.runtime.j2")).render(
        base_image=base_image, gpu=gpu, python=python.command, python_packages=list(python.packages),
        venv=IMAGE_VENV, runtime_wheel=wheelhouse.runtime_wheel.name, extras=list(settings["runtime_wheel_extras"]),
        state_dir=settings["deepfleet_state_dir"], config_path=config_path)


def image_requirements(settings: Mapping, wheelhouse: Wheelhouse, hashes: tuple[dict[str, str], str]) -> str:
    """wheels/requirements.txt of the build context: every wheel pinned to its SHA-256 (pip --require-hashes);
    `hashes` as roles/offline.wheelhouse_hashes gives them."""
    deps, runtime_sha256 = hashes
    return hashed_requirements(deps, f"/tmp/wheels/runtime/{wheelhouse.runtime_wheel.name}", runtime_sha256,
                               list(settings["runtime_wheel_extras"]))[0]


def context_files(wheelhouse: Wheelhouse, hashes: tuple[dict[str, str], str]
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """The build context's wheels: ({relative path: local path}, {relative path: sha256})."""
    deps, runtime_sha256 = hashes
    local = {f"wheels/deps/{name}": str(wheelhouse.deps_dir / name) for name in deps}
    manifest = {f"wheels/deps/{name}": digest for name, digest in deps.items()}
    runtime_name = f"wheels/runtime/{wheelhouse.runtime_wheel.name}"
    local[runtime_name] = str(wheelhouse.runtime_wheel)
    manifest[runtime_name] = runtime_sha256
    return local, manifest


def image_tag(dockerfile_text: str, manifest: Mapping[str, str]) -> str:
    """A tag naming exactly this Dockerfile and these wheels."""
    material = json.dumps({"dockerfile": dockerfile_text, "files": dict(sorted(manifest.items()))})
    return f"{IMAGE_REPOSITORY}:{hashlib.sha256(material.encode()).hexdigest()[:16]}"


def tarball_image(path: Path) -> str:
    """The image a `docker save` tarball holds (its first tag), read from its manifest.json."""
    try:
        with tarfile.open(path) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
    except (OSError, KeyError, tarfile.TarError, json.JSONDecodeError) as exc:
        raise RoleError(f"runtime_image_tarball {path} is not a `docker save` tarball ({exc}); "
                        "make one with `docker save IMAGE:TAG -o FILE`") from exc
    tags = [tag for entry in manifest for tag in entry.get("RepoTags") or []]
    if not tags:
        raise RoleError(f"the image in {path} has no tag; save it by name: `docker save IMAGE:TAG -o FILE`")
    return tags[0]


def container_args(settings: Mapping, image: str, config_path: str, models_dir: str, keys_dir: str,
                   runtime_directory: str, gpu: bool, name: str = CONTAINER) -> list[str]:
    """`docker run` arguments (after `run`, before the account's ids) for the runtime container."""
    state_dir = settings["deepfleet_state_dir"]
    args = [
        "--detach", "--name", name, "--restart", settings["runtime_container_restart"],
        "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "--tmpfs", f"{runtime_directory}:rw,nosuid,nodev,noexec,mode=0700"
        + (f",size={settings['runtime_decrypt_tmpfs_size']}" if settings.get("runtime_decrypt_tmpfs_size") else ""),
        "--env", f"RUNTIME_DIRECTORY={runtime_directory}",
        "--cap-drop", "ALL", "--cap-add", "CHOWN", "--cap-add", "SETUID", "--cap-add", "SETGID",
        "--security-opt", "no-new-privileges", "--shm-size", settings["runtime_container_shm_size"],
        "--ulimit", f"memlock={settings['runtime_container_memlock']}", "--ulimit", "stack=67108864:67108864",
        "--ulimit", "core=0:0",  # no core dump of the keys or the decrypted weights
        "--volume", f"{config_path}:{config_path}:ro", "--volume", f"{models_dir}:{models_dir}:ro",
        "--volume", f"{keys_dir}:{keys_dir}:ro", "--volume", f"{state_dir}:{state_dir}",
    ]
    if gpu and settings["runtime_container_gpus"]:
        args += ["--gpus", settings["runtime_container_gpus"]]
    return [*args, "--user", "0:0", "--entrypoint", "/bin/sh", image, "-c", START_SCRIPT, "deepfleet-runtime-start",
            keys_dir, "serve", "--config", config_path]


def build_command(tag: str, context_dir: str, build_args: list[str] = ()) -> list[str]:
    """`docker build` of a runtime image context (the classic builder or BuildKit alike); `build_args`:
    the site's proxy as Docker's predefined build arguments (roles/proxy.py), kept out of the image."""
    return ["docker", "build", "--quiet", *build_args, "--tag", tag, context_dir]


def spec_digest(args: list[str], user: str) -> str:
    return hashlib.sha256(json.dumps([user, *args]).encode()).hexdigest()[:16]


@operation()
def build_image(context_dir: str, tag: str, build_args: list[str] = ()):
    """
    `docker build` the context in `context_dir` as `tag`, unless the host has that image.

    + context_dir: remote directory with the Dockerfile and what it copies
    + tag: content-addressed tag (see image_tag)
    + build_args: `--build-arg` pairs (the site's proxy)
    """
    if host.get_fact(DockerImage, object_id=tag):
        host.noop(f"image {tag} exists")
        return
    # a proxy URL with credentials (user:password@) is masked in pyinfra's output
    yield StringCommand(*[MaskString(shlex.quote(arg)) if "@" in arg else QuoteString(arg)
                          for arg in build_command(tag, context_dir, build_args)])
    yield StringCommand(*PRUNE_BUILD_STAGES)


@operation()
def load_image(tarball: str, image: str):
    """
    `docker load` a pushed tarball, unless the host has its image.

    + tarball: remote path of a `docker save` file
    + image: the tag it holds
    """
    if host.get_fact(DockerImage, object_id=image):
        host.noop(f"image {image} exists")
        return
    yield StringCommand("docker", "load", "--quiet", "--input", QuoteString(tarball))


@operation()
def run_container(args: list[str], user: str):
    """
    Run the runtime container with `docker run ARGS`, recreating it only when its spec changed.

    + args: `docker run` arguments from container_args (name, limits, mounts, image, command)
    + user: the account the engine runs as: a host user name, resolved to its numeric ids on the host
    """
    digest = spec_digest(args, user)
    current = (host.get_fact(DockerContainer, object_id=CONTAINER) or [None])[0]
    if current and (current["Config"].get("Labels") or {}).get(SPEC_LABEL) == digest:
        if current["State"]["Running"]:
            host.noop(f"container {CONTAINER} runs its current spec")
            return
        yield StringCommand("docker", "start", CONTAINER)
        return
    if current:
        yield StringCommand("docker", "rm", "--force", CONTAINER)
    # Numeric ids: names would be looked up in the image, which has no such account.
    ids = f'{RUN_AS_ENV}="$(id -u {user}):$(id -g {user})"'
    yield StringCommand("docker", "run", "--label", f"{SPEC_LABEL}={digest}", "--env", ids,
                        *[QuoteString(arg) for arg in args])


@operation()
def remove_container(container: str):
    """
    Remove `container` if it exists (the runtime left Docker mode).

    + container: container name
    """
    if not host.get_fact(DockerContainer, object_id=container):
        host.noop(f"no container {container}")
        return
    yield StringCommand("docker", "rm", "--force", container)


def runtime_image(settings: Mapping, gpu: bool, python: RuntimePython | None, wheelhouse: Wheelhouse | None,
                  config_path: str) -> str:
    """Make the runtime image exist on the host (built there or loaded); returns its tag."""
    images_dir = f"{settings['deepfleet_home']}/images"
    if settings["runtime_image_source"] == "tarball":
        tarball = control_path(settings["runtime_image_tarball"], "runtime_image_tarball")
        image = tarball_image(tarball)
        digest = sha256_file(tarball)
        dest_dir = f"{images_dir}/tarball-{digest[:16]}"
        push_files(name=f"Runtime image tarball {tarball.name}", files={tarball.name: str(tarball)},
                   manifest={tarball.name: digest}, dest_dir=dest_dir)
        load_image(name=f"Load runtime image {image}", tarball=f"{dest_dir}/{tarball.name}", image=image)
        return image
    if settings["runtime_image_source"] != "build":
        raise RoleError(f"runtime_image_source is {settings['runtime_image_source']!r}; use 'build' or 'tarball'")
    base = settings["runtime_image_base_gpu" if gpu else "runtime_image_base_cpu"]
    text = dockerfile(settings, base, gpu, python, wheelhouse, config_path)
    hashes = wheelhouse_hashes(wheelhouse)
    local, manifest = context_files(wheelhouse, hashes)
    tag = image_tag(text, manifest)
    context_dir = f"{images_dir}/runtime-{tag.split(':')[1]}"
    push_files(name=f"Runtime image build context: wheels ({len(local)})", files=local, manifest=manifest,
               dest_dir=context_dir)
    files.put(name="Runtime image build context: Dockerfile", src=io.StringIO(text),
              dest=f"{context_dir}/Dockerfile", user="root", group="root", mode="0644")
    files.put(name="Runtime image build context: hashed requirements", src=io.StringIO(image_requirements(
              settings, wheelhouse, hashes)), dest=f"{context_dir}/wheels/requirements.txt", user="root", group="root",
              mode="0644")
    build_image(name=f"Build runtime image {tag} (on {base})", context_dir=context_dir, tag=tag,
                build_args=proxy_build_args(settings))
    return tag


def runtime_in_container(user: str, args: list[str], inputs: list[OperationMeta], ready_command: str) -> None:
    """Run the engine container (`args` from container_args); restart it when one of `inputs`
    (runtime.yaml, the current model release) changed; wait until it is ready."""
    # A host that ran the runtime as a systemd service before gives up the port first.
    systemd.service(name="Stop the runtime's systemd service (Docker mode)", service="deepfleet-runtime.service",
                    running=False, enabled=False)
    container = run_container(name=f"Runtime container {CONTAINER}", user=user, args=args)
    restart_needed = any_changed(*inputs)
    server.shell(name="Restart the runtime container for its new config or model release",
                 commands=[f"docker restart {CONTAINER}"],
                 _if=lambda: restart_needed() and not container.did_change())
    server.shell(name="Wait until the runtime container is ready", commands=[ready_command],
                 _if=any_changed(container, *inputs))
