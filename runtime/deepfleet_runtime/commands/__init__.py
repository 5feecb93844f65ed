"""The `deepfleet-runtime` commands, one module each (registered in deepfleet_runtime/cli.py)."""
