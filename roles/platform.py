"""The host platform: what a host needs before a model and a runtime arrive, in order.

base (packages, service account, directories), then the GPU stack: NVIDIA driver, CUDA toolkit,
Docker, NVIDIA container toolkit. Air-gapped (`bundle_dir` set, roles/bundle.py), the bundle's
package repository comes first and its images are loaded once Docker runs. Each GPU-stack role skips itself, saying why, where it does not
apply (no NVIDIA device on the PCI bus; no need for Docker), so every host runs the same list.
"""

from __future__ import annotations

from .base import base
from .bundle import bundle_images, bundle_sources
from .cuda import cuda
from .docker import docker
from .nvidia_container_toolkit import nvidia_container_toolkit
from .nvidia_driver import nvidia_driver


def host_platform() -> None:
    """base, NVIDIA driver, CUDA, Docker, NVIDIA container toolkit (deploys/site.py, deploys/platform.py)."""
    bundle_sources()  # air-gapped only: the bundle's repository becomes the one package source
    base()
    nvidia_driver()
    cuda()
    docker()
    bundle_images()  # air-gapped only: images the toolkit's test and Docker mode would pull
    nvidia_container_toolkit()
