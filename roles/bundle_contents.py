"""What the roles install on a host, for a bundle built on a machine that cannot reach the hosts.

`deepfleet bundle build` reads an inventory and asks, per host, what the site deploy would install
there: OS packages (and the vendor repositories they come from), the runtime's wheelhouses, the
container images, the model. The deploy learns OS, architecture and GPUs from facts; the build
takes them from the bundle_host_* settings instead. Each answer comes from the role that installs
it (driver_packages, cuda_packages, docker_packages, toolkit_packages, ...), so the bundle and the
deploy cannot disagree about a package name.
"""

from __future__ import annotations

from collections.abc import Mapping

from deepfleet.bundle.spec import AptSource, BundleSpec, ModelSource, OsTarget, WheelTarget

from .common import RoleError, control_path
from .cuda import cuda_packages
from .defaults import DEFAULTS
from .docker import docker_packages, docker_wanted
from .hostos import SUPPORTED, HostOS, image_os
from .limits_store import store_host, store_package
from .nvidia_container_toolkit import toolkit_packages, toolkit_repo
from .monitoring import NODE_EXPORTER_PACKAGES, PROMETHEUS_PACKAGES
from .nvidia_driver import driver_packages
from .offline import runtime_tarball
from .packages import PackageRepo
from .runtime import engine_os_packages, runtime_accelerator
from .runtime_container import tarball_image
from .selinux import SEMANAGE_PACKAGE
from .siem import rsyslog_packages
from .timesync import CHRONY_PACKAGES

# os-release VERSION_CODENAME of each supported apt OS (hosts report it; the build is told the OS).
CODENAMES = {("debian", "12"): "bookworm", ("ubuntu", "22.04"): "jammy", ("ubuntu", "24.04"): "noble"}
_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def declared_os(settings: Mapping, host_name: str) -> HostOS:
    """The OS a host runs, from `bundle_host_os` ("debian-12") and `bundle_host_machine`."""
    declared = settings.get("bundle_host_os")
    if not declared:
        raise RoleError(f"host {host_name}: set bundle_host_os (e.g. 'debian-12', 'ubuntu-22.04') so the bundle "
                        "holds packages for the OS it runs")
    os_id, _, version = str(declared).partition("-")
    machine = settings["bundle_host_machine"]
    if (os_id, version.split(".")[0]) not in SUPPORTED or machine not in _DEB_ARCH:
        supported = ", ".join(f"{name}-{major}" for name, major in SUPPORTED)
        raise RoleError(f"host {host_name}: bundle_host_os {declared!r} on {machine!r} is not one deepfleet supports "
                        f"({supported}; x86_64 or aarch64)")
    return HostOS(os_id, version, CODENAMES.get((os_id, version), ""), machine)


def host_packages(settings: Mapping, os: HostOS, host_name: str,
                  runs_limits_store: bool = False) -> tuple[list[str], list[PackageRepo]]:
    """The OS packages the platform roles install on this host, and the repositories they come from
    (runs_limits_store: the host is the gateway that runs the fleet's limits store)."""
    gpu = bool(settings["bundle_host_gpu"])
    packages, repos = [*os.python.packages, *settings["base_packages"]], []
    if runs_limits_store:
        packages.append(store_package(os).package)
    if settings["runtime_mode"] == "systemd":  # libraries the engine's wheels load (on hosts that serve)
        packages += engine_os_packages(settings["runtime_wheel_extras"], os)
    if os.family == "rhel":  # SELinux enforces there by default: the base role labels with semanage
        packages.append(SEMANAGE_PACKAGE)
    if gpu:
        kernel = settings["bundle_host_kernel"]
        if not kernel:
            raise RoleError(f"host {host_name}: set bundle_host_kernel to the host's `uname -r`; the NVIDIA driver "
                            "is built against that kernel's headers, which the bundle must carry")
        driver = driver_packages(os, kernel, settings)
        packages += driver.packages
        repos += driver.repos
        if settings["cuda_toolkit_install"]:
            repo, names = cuda_packages(settings, os)
            packages += names
            repos += [repo] if repo else []
    if docker_wanted(settings, gpu)[0]:
        repo, names = docker_packages(settings, os)
        packages += names
        repos += [repo] if repo else []
    if settings["ntp_servers"]:
        packages += CHRONY_PACKAGES
    if settings["siem_syslog_target"]:  # the gateways forward with it; the bundle does not know which hosts they are
        packages += rsyslog_packages(settings)
    if settings["monitoring_enabled"]:  # every host's node exporter; Prometheus for whichever monitors
        packages += [*NODE_EXPORTER_PACKAGES, *PROMETHEUS_PACKAGES]
    if gpu:
        packages += toolkit_packages(settings["nvidia_container_toolkit_version"], os)
        repos.append(toolkit_repo(os, settings["nvidia_container_toolkit_repo_base_url"],
                                  settings["nvidia_container_toolkit_repo_key_fingerprints"]))
    unique = {repo.name: repo for repo in repos}
    return sorted(set(packages)), [unique[name] for name in sorted(unique)]


def wheel_targets(settings: Mapping, os: HostOS) -> list[WheelTarget]:
    """The wheelhouses the runtime role installs: the host's venv, and in Docker mode the image's."""
    python, accelerator = os.python, runtime_accelerator(settings)
    extras = tuple(settings["runtime_wheel_extras"])
    if settings["runtime_mode"] != "docker":
        return [WheelTarget(python.version, os.machine, python.glibc, extras, accelerator)]
    targets = [WheelTarget(python.version, os.machine, python.glibc, (), accelerator)]
    if settings["runtime_image_source"] == "build":
        image = image_os(settings[_image_setting(settings) + "_os"], os.machine).python
        targets.append(WheelTarget(image.version, os.machine, image.glibc, extras, accelerator))
    return targets


def host_images(settings: Mapping, gpu: bool) -> list[str]:
    """Images the host's Docker must hold that it would otherwise pull: on GPU hosts the toolkit's
    test image and verify's CUDA sample, the runtime image's base when Docker mode builds it on the host."""
    if not docker_wanted(settings, gpu)[0]:
        return []
    images = [settings["nvidia_container_toolkit_test_image"], settings["verify_cuda_container_image"]] if gpu else []
    if settings["runtime_mode"] == "docker" and settings["runtime_image_source"] == "build":
        images.append(settings[_image_setting(settings, gpu)])
    return images


def _image_setting(settings: Mapping, gpu: bool | None = None) -> str:
    gpu = settings["bundle_host_gpu"] if gpu is None else gpu
    return "runtime_image_base_gpu" if gpu else "runtime_image_base_cpu"


def bundle_spec(hosts: list[tuple[str, Mapping]], limits_store_host: str | None = None) -> BundleSpec:
    """Everything the hosts of an inventory install ({setting: value} per host, defaults filled in;
    limits_store_host: the gateway that runs the fleet's limits store, roles/limits_store.store_host)."""
    targets: dict[str, OsTarget] = {}
    wheels, images, tarballs, models, host_targets = {}, {}, {}, {}, {}
    for name, settings in hosts:
        os = declared_os(settings, name)
        packages, repos = host_packages(settings, os, name, runs_limits_store=name == limits_store_host)
        resolver = (settings["bundle_resolver_images"] or {}).get(f"{os.id}-{os.version}")
        if not resolver:
            raise RoleError(f"host {name}: bundle_resolver_images names no image for {os.id}-{os.version}")
        target = OsTarget(os.id, os.version, os.family, os.machine, os.deb_arch, resolver, tuple(packages),
                          tuple(AptSource(r.name, r.title, r.key_url, r.apt_list(os) if os.family == "debian" else r.dnf_repo(),
                                          r.key_fingerprints) for r in repos))
        known = targets.get(target.key)
        if known:
            if known.resolver_image != resolver:
                raise RoleError(f"hosts of {target.key} name different resolver images ({known.resolver_image}, "
                                f"{resolver}); use one")
            merged = {s.name: s for s in (*known.sources, *target.sources)}
            target = OsTarget(os.id, os.version, os.family, os.machine, os.deb_arch, resolver,
                              tuple(sorted(set(known.packages) | set(packages))),
                              tuple(merged[key] for key in sorted(merged)))
        targets[target.key] = target
        host_targets[name] = target.key
        wheels.update({wheel.key: wheel for wheel in wheel_targets(settings, os)})
        images.update(dict.fromkeys(host_images(settings, bool(settings["bundle_host_gpu"]))))
        tarball = runtime_tarball(settings)
        if tarball:
            tarballs[tarball_image(tarball)] = tarball
        if settings.get("model_source"):
            model = ModelSource(settings["model_name"], control_path(settings["model_source"], "model_source"))
            if models.get(model.name, model) != model:
                raise RoleError(f"hosts serve model {model.name} from two sources ({models[model.name].source}, "
                                f"{model.source}); a bundle holds one release per model name")
            models[model.name] = model
    return BundleSpec(tuple(targets[key] for key in sorted(targets)), tuple(wheels[key] for key in sorted(wheels)),
                      tuple(sorted(images)), tuple(sorted(tarballs.items())),
                      tuple(models[key] for key in sorted(models)), host_targets)


def inventory_bundle_spec(inventory) -> BundleSpec:
    """bundle_spec for a loaded inventory: its hosts' settings and the gateway that runs the store."""
    hosts = [(host.name, {**DEFAULTS, **host.data.dict()}) for host in inventory]
    if not hosts:
        raise RoleError("the inventory lists no hosts")
    store = store_host(inventory)
    return bundle_spec(hosts, limits_store_host=store.name if store else None)
