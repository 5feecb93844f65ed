"""`deepfleet plan` and `deepfleet up` against the real test host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fleet


def _deepfleet(inventory_file: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPFLEET_HOSTS_FILE": str(inventory_file)}
    command = [str(Path(sys.executable).parent / "deepfleet"), *args, "inventories/local.py"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                          cwd=Path(__file__).resolve().parents[2])


def test_plan_shows_exactly_one_changed_value_then_up_converges(site, tmp_path):
    converged = _deepfleet(site.inventory, "plan")
    assert (converged.returncode, converged.stdout.strip()) == (0, "No changes: the hosts are converged.")

    changed = site.with_overrides(tmp_path / "inventory.json", runtime_max_batch_size=9)
    try:
        plan = _deepfleet(changed, "plan")
        assert plan.returncode == 2, plan.stderr
        would_change = plan.stdout.split("Operations that run only if")[0]
        assert would_change.strip().splitlines()[1:] == [
            "  deepfleet runtime | Runtime config  [h1]",
            "  deepfleet runtime | Runtime release (model + runtime + config)  [h1]"]
        diff = plan.stdout.split("Diffs:")[1]
        assert "--- [h1] /etc/deepfleet/runtime.yaml" in diff
        changed_lines = [line for line in diff.splitlines() if line.lstrip().startswith(("+ ", "- "))]
        assert [line.split()[1:] for line in changed_lines] == [["max_batch_size:", "32"],
                                                              ["max_batch_size:", "9"]]

        up = _deepfleet(changed, "up")
        assert up.returncode == 0, up.stderr[-2000:]
        assert "on 1 host(s): h1" in up.stdout
        assert _deepfleet(changed, "plan").returncode == 0
    finally:
        restored = _deepfleet(site.inventory, "up")
        assert restored.returncode == 0, restored.stderr[-2000:]


def test_a_backup_restored_on_a_fresh_control_dir_plans_zero_changes(site, tmp_path):
    """The site's control state (CA, API keyring, model keys) as a state dir, backed up, restored into an
    empty $DEEPFLEET_HOME on a "new control machine", and `deepfleet plan` from it: the hosts are converged."""
    root, home, fresh = site.inventory.parent, tmp_path / "home", tmp_path / "fresh"
    home.mkdir()
    shutil.copytree(root / "pki", home / "pki")
    shutil.copytree(root / "model-keys", home / "model-keys")
    shutil.copy2(root / "keys.json", home / "api-keys.json")
    inventory = site.with_overrides(tmp_path / "inventory.json", gateway_pki_dir="<state>/pki",
                                    gateway_api_keyring="<state>/api-keys.json", model_keys_dir="<state>/model-keys")
    passphrase = {"DEEPFLEET_BACKUP_PASSPHRASE": "correct horse battery staple, ward 7"}
    created = _deepfleet_cli(["backup", "create", "--out", str(tmp_path / "fleet.backup")], home, passphrase)
    assert created.returncode == 0, created.stderr
    restored = _deepfleet_cli(["backup", "restore", str(tmp_path / "fleet.backup")], fresh, passphrase)
    assert restored.returncode == 0, restored.stderr
    plan = _deepfleet_cli(["plan", "inventories/local.py"], fresh, {"DEEPFLEET_HOSTS_FILE": str(inventory)})
    assert (plan.returncode, plan.stdout.strip()) == (0, "No changes: the hosts are converged."), plan.stderr[-2000:]
    assert passphrase["DEEPFLEET_BACKUP_PASSPHRASE"] not in created.stdout + created.stderr + restored.stdout


def _deepfleet_cli(args: list[str], home: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "deepfleet"), *args], capture_output=True, text=True,
                          env={**os.environ, "DEEPFLEET_HOME": str(home), **env}, timeout=600,
                          cwd=Path(__file__).resolve().parents[2])
