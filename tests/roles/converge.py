"""The facts a host would answer after a planned run had been applied, for "a second run changes nothing".

Only what the GPU-stack roles do is modelled, each from the commands the plan shows (not from
the roles' code): uploaded files (present, with the uploaded content's SHA-1), downloaded keys,
removed files, apt/dnf installs (`name=version` and dnf's `name-version-release`), dnf modules,
holds, enabled repositories, started and enabled services, and a loaded driver module after the
reboot.
"""

from __future__ import annotations

import copy
import hashlib
import re
import shlex

PRESENT_FILE = {"user": "root", "group": "root", "mode": 644, "size": 1}
_DNF_NVR = re.compile(r"^(.+?)-(\d[\w+~]*\.[\w.+~]*-[\w.+~]+)$")  # name-version-release (a dotted version)


def _split_install(words: list[str], family: str) -> dict[str, str]:
    packages = {}
    for word in words:
        if word.startswith("-"):
            continue
        if family == "debian":
            name, _, version = word.partition("=")
        else:
            match = _DNF_NVR.match(word)
            name, version = match.groups() if match else (word, "")
        packages[name] = version or "1"
    return packages


def converged(facts: dict, ops: list, branch: str = "570") -> dict:
    """`facts` as the host would answer them once `ops` (every op, conditional ones included) ran."""
    after = copy.deepcopy(facts)
    family = "rhel" if "rpm.RpmPackages" in facts else "debian"
    packages_fact = "rpm.RpmPackages" if family == "rhel" else "deb.DebPackages"
    installed = after.setdefault(packages_fact, {})
    files = {key: value for key, value in (after.get("files.File") or {}).items()}
    sha1 = dict(after.get("files.Sha1File") or {})
    directories = dict(after.get("files.Directory") or {})
    status = dict((after.get("systemd.SystemdStatus") or {}).get("*") or {})
    enabled = dict((after.get("systemd.SystemdEnabled") or {}).get("*") or {})
    held = list((after.get("roles.driver_reboot.HeldPackages") or {}).get("$output") or [])
    repos = after.get("roles.facts.DnfEnabledRepos") or []
    repos = list(repos.get("$output", []) if isinstance(repos, dict) else repos)
    for op in ops:
        for path, content in op.uploads().items():
            files[f"path={path}"] = PRESENT_FILE
            sha1[f"path={path}"] = hashlib.sha1(content.encode()).hexdigest()
            directories[f"path={path.rsplit('/', 1)[0]}"] = {"user": "root", "group": "root", "mode": 755}
        for command in op.shell():
            words = shlex.split(command) if "'" not in command or "versionlock" in command else command.split()
            if "install" in words and words[0] in ("apt-get", "dnf", "DEBIAN_FRONTEND=noninteractive"):
                if "module" in words:
                    installed["nvidia-driver"] = [f"{branch}.133.20-1.el9"]
                    continue
                names = _split_install(words[words.index("install") + 1:], family)
                installed.update({name: [version] for name, version in names.items()})
            elif words[:2] == ["apt-mark", "hold"]:
                held += words[2:]
            elif words[:3] == ["dnf", "versionlock", "add"]:
                held.append(f"nvidia-driver-3:{branch}.133.20-1.el9.*")
            elif words[:3] == ["dnf", "config-manager", "--set-enabled"]:
                repos.append(words[3])
            elif words[0] == "systemctl" and words[1] in ("start", "enable"):
                (status if words[1] == "start" else enabled)[words[2]] = True
            elif "mv" in words:  # download_once's atomic rename: the key file exists
                files[f"path={words[-1]}"] = PRESENT_FILE
            elif words[:2] == ["rm", "-f"]:
                files[f"path={words[2]}"] = None
    after["files.File"] = {"*": None, **files}
    after["files.Sha1File"] = {"*": None, **sha1}
    after["files.Directory"] = directories
    after["systemd.SystemdStatus"] = {"*": status}
    after["systemd.SystemdEnabled"] = {"*": enabled}
    after["roles.driver_reboot.HeldPackages"] = {"$output": held}
    after["roles.facts.DnfEnabledRepos"] = {"$output": repos}
    module = f"{branch}.133.20"
    after["roles.gpu_facts.NvidiaModuleState"] = {"$output": [f"loaded={module}", f"installed={module}"]}
    return after
