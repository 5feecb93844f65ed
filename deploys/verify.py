"""Verify provisioned hosts: driver, GPU count, CUDA, Docker's nvidia runtime, CUDA in a container per GPU.

    pyinfra inventories/<yours>.py deploys/verify.py

Read-only (it only runs throwaway `docker run --rm` CUDA containers: `nvidia-smi -L`, and NVIDIA's
vectorAdd sample once per GPU); prints one report per host and fails the hosts that do not match
their settings (roles/verify.py says what is checked).
"""

from roles.settings import check_settings
from roles.verify import verify

check_settings()
verify()
