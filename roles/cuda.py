"""The cuda role: a pinned CUDA toolkit from NVIDIA's CUDA repository, on PATH for every login shell.

NVIDIA's CUDA repository (`cuda_repo_base_url`) carries the driver too, so `cuda_repo()` is shared
with roles/nvidia_driver.py; the repository is added by whichever of the two roles installs from
it first. Containers bring their own CUDA runtime: set `cuda_toolkit_install: False` for hosts
that only run the Docker-mode runtime.
"""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from .common import RoleError, template
from .defaults import DEFAULTS
from .gpu_facts import has_nvidia_gpu
from .hostos import HostOS, host_os
from .packages import PackageRepo, add_repo, install_packages
from .skip import skip_role

# The key cuda-keyring installs, by repository family. Fetched from the base URL (not installed
# with the cuda-keyring .deb, whose sources file would point back at NVIDIA's servers).
_CUDA_REPO_KEYS = {"debian": "3bf863cc.pub", "rhel": "D42D0685.pub"}
# Repositories NVIDIA signs with a newer key: debian13's 3BF863CC is refused by trixie's sqv (its
# binding signature uses SHA-1, rejected since 2026-02-01; NVIDIA/cuda-repo-management#39).
_CUDA_REPO_KEYS_BY_DISTRO = {"debian13": "8793F200.pub", "rhel10": "CDF6BA43.pub"}  # rhel10: its cuda-rhel10.repo
# Repositories NVIDIA publishes that deepfleet does not install from yet, and why.
_UNSUPPORTED_CUDA_REPOS = {"ubuntu2604": "its packages are the 590+ layout without a branch in their names, and "
                                         "its signing key file is not pinned here"}


def cuda_repo(os: HostOS, base_url: str, fingerprints: tuple[str, ...] = ()) -> PackageRepo:
    """NVIDIA's CUDA repository for this OS and architecture, under `base_url`, its key accepted
    only with one of `fingerprints`."""
    if os.nvidia_distro in _UNSUPPORTED_CUDA_REPOS:
        raise RoleError(f"{os.label}: NVIDIA's {os.nvidia_distro} CUDA repository is not supported yet "
                        f"({_UNSUPPORTED_CUDA_REPOS[os.nvidia_distro]}); set nvidia_driver_source: distro and "
                        "cuda_source: distro (Ubuntu's own driver and CUDA toolkit)")
    root = f"{base_url.rstrip('/')}/{os.nvidia_distro}/{os.nvidia_arch}"
    key = _CUDA_REPO_KEYS_BY_DISTRO.get(os.nvidia_distro, _CUDA_REPO_KEYS[os.family])
    # The pinned fingerprints are 3bf863cc's: a repository signed with another key is not pinned yet.
    pinned = tuple(fingerprints) if key == _CUDA_REPO_KEYS["debian"] else ()
    return PackageRepo(name="cuda", title="NVIDIA CUDA repository", key_url=f"{root}/{key}",
                       apt_source=f"{root}/ /", dnf_baseurl=root, key_fingerprints=pinned)


def cuda_packages(settings, os: HostOS) -> tuple[PackageRepo | None, list[str]]:
    """The toolkit's repository (None: the OS's own sources) and package, as `cuda_source` and
    `cuda_version` say."""
    if settings["cuda_source"] == "distro":
        if os.family != "debian":
            raise RoleError(f"cuda_source 'distro' is not available on {os.label}; use 'cuda_repo'")
        return None, ["nvidia-cuda-toolkit"]
    if settings["cuda_source"] != "cuda_repo":
        raise RoleError(f"cuda_source is {settings['cuda_source']!r}; use 'cuda_repo' or 'distro'")
    version = str(settings["cuda_version"])
    if not re.fullmatch(r"\d+\.\d+", version):
        raise RoleError(f"cuda_version is {version!r}; give major.minor, e.g. '12.8'")
    return cuda_repo(os, settings["cuda_repo_base_url"], settings["cuda_repo_key_fingerprints"]), [f"cuda-toolkit-{version.replace('.', '-')}"]


def cuda_home(version: str) -> str:
    return f"/usr/local/cuda-{version}"


@deploy("CUDA toolkit", data_defaults=DEFAULTS)
def cuda():
    """Install the pinned CUDA toolkit and put it on PATH; skipped on hosts without an NVIDIA GPU."""
    data = host.data
    if not has_nvidia_gpu():
        skip_role("CUDA toolkit", "no NVIDIA device on the PCI bus")
        return
    if not data.cuda_toolkit_install:
        skip_role("CUDA toolkit", "cuda_toolkit_install is false (containers bring their own CUDA)")
        return
    os = host_os()
    repo, packages = cuda_packages({key: data.get(key) for key in DEFAULTS}, os)
    if repo is None:
        install_packages("CUDA toolkit (the OS's own)", packages, os)
        return
    version = str(data.cuda_version)
    # The driver role adds the repository when it installs from it.
    repo_changes = [] if data.nvidia_driver_source == "cuda_repo" else add_repo(repo, os)
    install_packages(f"CUDA toolkit {version}", packages, os, repo_changes)
    files.template(name=f"CUDA {version} on PATH for login shells", src=template("cuda-profile.sh.j2"),
                   dest="/etc/profile.d/deepfleet-cuda.sh", user="root", group="root", mode="0644",
                   version=version, cuda_home=cuda_home(version))
