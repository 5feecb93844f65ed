"""Runtime releases on hosts (deepfleet_runtime/runtimereleases.py does the work there): what the
runtime serves is one release, model release + runtime version + rendered runtime.yaml, under
<home>/releases/<id>/, switched atomically, the last `runtime_keep_releases` kept. Runtime venvs live
in <home>/venvs/<install id>/; <home>/venv points at the newest (the gateway and tools run from it).

The deploy decides from one small fact (the current release's record) whether anything changes;
`deepfleet rollback` (deploys/rollback.py, roles/rollback.py) switches back and restarts the runtime.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation
from pyinfra.facts.files import Link

from deepfleet_runtime.runtimereleases import RELEASE_FILE, release_id

from .facts import JsonFile


def releases_dir() -> str:
    return f"{host.data.deepfleet_home}/releases"


def current_release_dir() -> str:
    """What the runtime unit runs: the current release's venv and runtime.yaml."""
    return f"{releases_dir()}/current"


def venv_path(install_id: str) -> str:
    return f"{host.data.deepfleet_home}/venvs/{install_id}"


def runtime_version(install_id: str | None = None, image: str | None = None) -> dict:
    """The runtime part of a release: a venv (systemd mode) or an image (Docker mode)."""
    return {"install_id": install_id, "venv": venv_path(install_id)} if install_id else {"image": image}


@operation()
def use_venv(home: str, venv: str, releases: str):
    """
    Point `<home>/venv` at a freshly installed venv (for the gateway and tools); remove venvs
    that no kept release and not that link refer to.

    + home: deepfleet_home on the host
    + venv: the venv to use, <home>/venvs/<install id>
    + releases: the runtime releases directory (their venvs are kept)

    .. code:: python

        use_venv(home="/opt/deepfleet", venv="/opt/deepfleet/venvs/3f2a-9c0d", releases="/opt/deepfleet/releases")
    """
    link = host.get_fact(Link, path=f"{home}/venv")
    if link and link.get("link_target") == venv:
        host.noop(f"{home}/venv is {venv}")
        return
    yield StringCommand(f"{venv}/bin/deepfleet-runtime", "release", "use-venv", "--root", QuoteString(releases),
                        "--venv", QuoteString(venv))


@operation()
def activate_runtime_release(cli: str, releases: str, config_path: str, config_text: str, runtime: dict,
                             group: str, keep: int):
    """
    Make the release of the rendered runtime.yaml + this runtime version current, keep the last N.

    + cli: the deepfleet-runtime to run (of the venv just installed)
    + releases: the releases directory on the host
    + config_path: the rendered runtime.yaml on the host (copied into the release)
    + config_text: its content (the release id is derived from it and `runtime`)
    + runtime: {"install_id", "venv"} or {"image"} (roles.release.runtime_version)
    + group, keep: who may read releases; how many are kept (current included)

    .. code:: python

        activate_runtime_release(cli="/opt/deepfleet/venvs/ab-cd/bin/deepfleet-runtime",
                                 releases="/opt/deepfleet/releases", config_path="/etc/deepfleet/runtime.yaml",
                                 config_text=text, runtime={"image": "deepfleet-runtime:1f2e"},
                                 group="deepfleet", keep=3)
    """
    wanted = release_id(config_text.encode(), runtime)
    current = host.get_fact(JsonFile, path=f"{releases}/current/{RELEASE_FILE}") or {}
    if current.get("id") == wanted:
        host.noop(f"runtime release {wanted} is current")
        return
    version = ["--venv", QuoteString(runtime["venv"]), "--install-id", runtime["install_id"]] if "venv" in runtime \
        else ["--image", QuoteString(runtime["image"])]
    yield StringCommand(cli, "release", "activate", "--root", QuoteString(releases), "--config",
                        QuoteString(config_path), *version, "--group", group, "--keep", str(keep))
