"""Verify provisioned hosts: driver, GPU count, CUDA, Docker's nvidia runtime, a CUDA container.

    pyinfra inventories/<yours>.py deploys/verify.py

Read-only (it only runs a throwaway `docker run --rm` CUDA container); prints one report per
host and fails the hosts that do not match their settings (roles/verify.py says what is checked).
"""

from roles.settings import check_settings
from roles.verify import verify

check_settings()
verify()
