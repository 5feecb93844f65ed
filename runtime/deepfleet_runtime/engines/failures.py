"""Which failures are a request's own, and which mean the device is gone.

A request's failure (its prefill ran out of memory, its probabilities became NaN) ends that
request only. A device failure (a CUDA device-side assert, an illegal memory access, a lost GPU)
leaves the CUDA context unusable for every later call: the engine stops serving, readiness goes
false and the service exits so that systemd restarts it on a fresh context.
"""

from __future__ import annotations

# Texts of CUDA errors that poison the context (CUDA runtime API, cudaError_t descriptions).
_DEVICE_ERRORS = ("device-side assert", "illegal memory access", "unspecified launch failure",
                  "uncorrectable ecc error", "device not ready", "gpu has fallen off the bus",
                  "misaligned address", "illegal instruction", "launch timed out", "cuda error: unknown error")


def device_broken(exc: BaseException) -> bool:
    """True when `exc` says the accelerator itself failed (not merely out of memory)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return False
    text = str(exc).lower()
    if isinstance(exc, torch.AcceleratorError) and "out of memory" not in text:
        return True
    return any(marker in text for marker in _DEVICE_ERRORS)
