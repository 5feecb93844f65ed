"""Writing files so that they appear whole or not at all (one implementation, in the runtime's
light pieces, shared with hosts: deepfleet_runtime.atomicfile)."""

from deepfleet_runtime.atomicfile import fsync_dir, write_atomic

__all__ = ["fsync_dir", "write_atomic"]
