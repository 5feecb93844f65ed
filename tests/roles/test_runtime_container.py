"""Docker mode of the runtime role: Dockerfile, container spec, image sources, mode switches (planned)."""

from __future__ import annotations

import io
import json
import re
import tarfile

import pytest

import yaml

from roles.common import RoleError
from roles.defaults import DEFAULTS
from roles.rollback import rollback
from roles.runtime import runtime
from roles.runtime_container import START_SCRIPT, container_args, image_tag, spec_digest, tarball_image

from .factplan import find, load_case, plan, with_facts

DOCKER_MODE = {"runtime_mode": "docker"}


def _docker_save(path, manifest):
    with tarfile.open(path, "w") as tar:
        for name, content in (("manifest.json", json.dumps(manifest).encode()), ("blobs/sha256/ab", b"layer")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def _container(labels, running=True):
    return [{"Config": {"Labels": labels}, "State": {"Running": running}}]


def test_cpu_host_builds_a_debian_based_image_and_runs_it_without_gpus(wheelhouse, control_data):
    ops = plan(load_case("debian12-nogpu"), runtime, data={**control_data, **DOCKER_MODE})
    dockerfile = next(iter(find(ops, "build context: Dockerfile").uploads().values()))
    assert "FROM debian:12-slim AS python" in dockerfile and "NVIDIA_VISIBLE_DEVICES" not in dockerfile
    assert "--require-hashes --find-links /tmp/wheels/deps -r /tmp/wheels/requirements.txt" in dockerfile
    assert dockerfile.rstrip().endswith('CMD ["serve", "--config", "/etc/deepfleet/runtime.yaml"]')
    requirements = next(iter(find(ops, "build context: hashed requirements").uploads().values()))
    assert requirements.startswith("/tmp/wheels/runtime/deepfleet_runtime-0.1.0-py3-none-any.whl[transformers] "
                                   "--hash=sha256:")
    assert all(" --hash=sha256:" in line and "==" in line for line in requirements.splitlines()[1:])
    run = find(ops, "Runtime container deepfleet-runtime").shell()[0]
    assert "--gpus" not in run and '--env DEEPFLEET_RUN_AS="$(id -u deepfleet):$(id -g deepfleet)"' in run
    # The current release's config (docker resolves the `current` link at each start, so a restart
    # after a release switch reads the new one) and every model release it may name.
    for mount in ("/opt/deepfleet/releases/current/runtime.yaml:/opt/deepfleet/releases/current/runtime.yaml:ro",
                  "/opt/deepfleet/models:/opt/deepfleet/models:ro", "/var/lib/deepfleet:/var/lib/deepfleet"):
        assert f"--volume {mount} " in run
    assert run.endswith(" serve --config /opt/deepfleet/releases/current/runtime.yaml")
    assert [r["extras"] for r in wheelhouse.requests] == [[], ["transformers"]]
    install = find(ops, "Install deepfleet-runtime (offline, from the wheelhouse)")
    host_requirements = [text for path, text in install.uploads().items() if path.endswith("deepfleet-requirements.txt")]
    assert host_requirements[0].startswith("/opt/deepfleet/wheelhouse/runtime-")
    assert host_requirements[0].split()[0].endswith("deepfleet_runtime-0.1.0-py3-none-any.whl")  # no engine extras
    assert find(ops, "Wait until the runtime container is ready").change == "conditional"


def test_gpu_image_sets_nvidia_variables_and_container_gets_the_chosen_gpus(wheelhouse, control_data):
    ops = plan(load_case("ubuntu2404-rtx4090"), runtime,
               data={**control_data, **DOCKER_MODE, "runtime_container_gpus": "device=0"})
    dockerfile = next(iter(find(ops, "build context: Dockerfile").uploads().values()))
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in dockerfile
    assert " --gpus device=0 " in find(ops, "Runtime container deepfleet-runtime").shell()[0]


def test_container_limits_and_hardening():
    args = container_args(DEFAULTS, "img:1", "/etc/deepfleet/runtime.yaml", "/opt/m", "/etc/deepfleet/keys",
                          "/run/deepfleet-runtime", gpu=False)
    pairs = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert pairs["--restart"] == "unless-stopped" and pairs["--network"] == "host"
    assert pairs["--shm-size"] == "16g" and pairs["--cap-drop"] == "ALL"
    assert "--read-only" in args and ["--ulimit", "memlock=-1:-1"] == args[args.index("memlock=-1:-1") - 1:][:2]
    assert ["--ulimit", "core=0:0"] == args[args.index("core=0:0") - 1:][:2]  # no core dump of keys or weights
    assert "/opt/m:/opt/m:ro" in args and args[-4:] == ["/etc/deepfleet/keys", "serve", "--config",
                                                        "/etc/deepfleet/runtime.yaml"]


def test_encrypted_releases_get_the_units_guarantees_in_the_container():
    args = container_args(DEFAULTS, "img:1", "/etc/deepfleet/runtime.yaml", "/opt/deepfleet/models",
                          "/etc/deepfleet/keys", "/run/deepfleet-runtime", gpu=False)
    # The keys (root 0400 on the host) are mounted read-only; their copy goes to a private tmpfs.
    assert "/etc/deepfleet/keys:/etc/deepfleet/keys:ro" in args
    assert "/run/deepfleet-runtime:rw,nosuid,nodev,noexec,mode=0700" in args
    assert "RUNTIME_DIRECTORY=/run/deepfleet-runtime" in args  # where the loader decrypts config/tokenizer
    # Root only to copy the keys: three capabilities, then the service account for good.
    added = [args[i + 1] for i, arg in enumerate(args) if arg == "--cap-add"]
    assert sorted(added) == ["CHOWN", "SETGID", "SETUID"] and "no-new-privileges" in args
    assert args[args.index("--user") + 1] == "0:0" and args[args.index("--entrypoint") + 1] == "/bin/sh"
    assert args[args.index("img:1") + 1:args.index("img:1") + 3] == ["-c", START_SCRIPT]
    assert START_SCRIPT.splitlines()[-1].startswith('exec setpriv --reuid "${DEEPFLEET_RUN_AS%:*}"')


def test_docker_mode_mounts_what_runtime_yaml_names(wheelhouse, control_data):
    ops = plan(load_case("debian12-nogpu"), runtime, data={**control_data, **DOCKER_MODE})
    config = yaml.safe_load(find(ops, "Runtime config").uploads()["/etc/deepfleet/runtime.yaml"])
    args = find(ops, "Runtime container deepfleet-runtime").shell()[0].split()
    mounts = {value.split(":")[1]: value.split(":")[2:]
              for flag, value in zip(args, args[1:]) if flag == "--volume"}
    tmpfs = [value.split(":")[0] for flag, value in zip(args, args[1:]) if flag == "--tmpfs"]
    # The runtime release names its model release, a sibling of the others: the whole models directory is mounted.
    assert re.fullmatch(r"/opt/deepfleet/models/tiny-deepseek-v3@[0-9a-f]{12}", config["model"]["path"])
    assert mounts["/opt/deepfleet/models"] == ["ro"]
    # The keys the runtime reads are the private copy in the container's tmpfs.
    assert config["model"]["keys_dir"] == "/run/deepfleet-runtime/keys" and "/run/deepfleet-runtime" in tmpfs
    assert mounts["/etc/deepfleet/keys"] == ["ro"]


@pytest.mark.parametrize(("changed", "restart", "wait"), [
    ([], "no", "no"),
    (["Activate model"], "yes", "yes"),  # a new current release
    (["Runtime release"], "yes", "yes"),  # a new config, runtime or model: a new runtime release
    (["Runtime container deepfleet-runtime"], "no", "yes"),  # created afresh: already loading it
])
def test_the_container_restarts_for_a_new_release_or_config(wheelhouse, control_data, changed, restart, wait):
    ops = plan(load_case("debian12-nogpu"), runtime, data={**control_data, **DOCKER_MODE}, changed=changed)
    assert find(ops, "Restart the runtime container").change == restart
    assert find(ops, "Wait until the runtime container is ready").change == wait


def _rollback_case(target_image, running_image="deepfleet-runtime:new", images=("deepfleet-runtime:old",)):
    """A Docker-mode host whose container runs `running_image` and whose rollback target (what
    `deepfleet-runtime release rollback --dry-run` answers) runs `target_image`."""
    target = {"release": "0a1b2c3d4e5f", "previous": "f5e4d3c2b1a0", "model": "tiny@2",
              "runtime": {"image": target_image}}
    running = _container({"deepfleet.spec": "0123"}) if running_image else None
    if running:
        running[0]["Config"]["Image"] = running_image
    return with_facts(load_case("debian12-nogpu"), **{
        "roles.rollback.RollbackTarget": {"*": {"$output": [json.dumps(target)]}},
        "docker.DockerContainer": {"*": running},
        "docker.DockerImage": {**{f"object_id={image}": [{"Id": "sha256:ab"}] for image in images}, "*": None}})


def test_rollback_restarts_the_container_when_the_release_keeps_its_image(control_data):
    ops = plan(_rollback_case("deepfleet-runtime:new"), rollback, data={**control_data, **DOCKER_MODE})
    assert "release rollback" in find(ops, "Switch the runtime back").shell()[0]
    restart = find(ops, "Restart the runtime on the release and wait until it is ready").shell()
    assert restart[0] == "docker restart deepfleet-runtime" and "wait-ready" in restart[1]
    assert not [op for op in ops if "systemctl" in " ".join(op.shell())]


def test_rollback_recreates_the_container_on_the_previous_releases_image(control_data):
    """Docker mode rolls back the image too: the container is recreated on the target release's
    image (its spec otherwise what the deploy gives it), after the switch, and waited for."""
    ops = plan(_rollback_case("deepfleet-runtime:old"), rollback, data={**control_data, **DOCKER_MODE})
    names = [op.name.split(" | ")[1] for op in ops]
    switch = names.index(next(n for n in names if n.startswith("Switch the runtime back")))
    recreate = names.index(next(n for n in names if "Runtime container deepfleet-runtime" in n))
    assert switch < recreate < names.index("Wait until the runtime container is ready")
    commands = ops[recreate].shell()
    assert commands[0] == "docker rm --force deepfleet-runtime"
    assert " deepfleet-runtime:old -c " in commands[1] and "deepfleet-runtime:new" not in commands[1]
    assert " serve --config /opt/deepfleet/releases/current/runtime.yaml" in commands[1]
    assert "wait-ready http://127.0.0.1:" in find(ops, "Wait until the runtime container is ready").shell()[0]
    assert not [op for op in ops if "docker restart" in " ".join(op.shell())]


def test_rollback_to_an_image_gone_from_the_host_fails_before_switching(control_data):
    ops = plan(_rollback_case("deepfleet-runtime:old", images=()), rollback, data={**control_data, **DOCKER_MODE})
    assert not [op for op in ops if "release rollback" in " ".join(op.shell())]  # nothing switched
    (fail,) = [op for op in ops if "exit 1" in " ".join(op.shell())]
    assert "deepfleet-runtime:old" in fail.shell()[0] and "deepfleet up" in fail.shell()[0]
    assert not [op for op in ops if "docker r" in " ".join(op.shell())]


def test_unchanged_running_container_is_left_alone_and_a_changed_spec_is_recreated(wheelhouse, control_data):
    facts = load_case("debian12-nogpu")
    first = find(plan(facts, runtime, data={**control_data, **DOCKER_MODE}), "Runtime container deepfleet-runtime")
    digest = first.shell()[0].split("deepfleet.spec=")[1].split()[0]
    same = with_facts(facts, **{"docker.DockerContainer": {"*": _container({"deepfleet.spec": digest})}})
    assert find(plan(same, runtime, data={**control_data, **DOCKER_MODE}), "Runtime container deepfleet-runtime").change == "no"
    stopped = with_facts(facts, **{"docker.DockerContainer": {"*": _container({"deepfleet.spec": digest}, False)}})
    assert find(plan(stopped, runtime, data={**control_data, **DOCKER_MODE}),
                "Runtime container deepfleet-runtime").shell() == ["docker start deepfleet-runtime"]
    changed_spec = find(plan(same, runtime, data={**control_data, **DOCKER_MODE, "runtime_container_shm_size": "8g"}),
                        "Runtime container deepfleet-runtime")
    assert changed_spec.shell()[0] == "docker rm --force deepfleet-runtime"
    assert "--shm-size 8g" in changed_spec.shell()[1]


def test_spec_digest_and_image_tag_follow_their_inputs():
    assert spec_digest(["a"], "deepfleet") != spec_digest(["b"], "deepfleet") != spec_digest(["b"], "other")
    assert image_tag("FROM a", {"x.whl": "1"}) != image_tag("FROM b", {"x.whl": "1"}) != image_tag("FROM b", {"x.whl": "2"})
    assert image_tag("FROM a", {"x.whl": "1"}).startswith("deepfleet-runtime:")


def test_tarball_source_pushes_and_loads_the_image_instead_of_building(wheelhouse, control_data, tmp_path):
    tarball = _docker_save(tmp_path / "runtime.tar", [{"RepoTags": ["deepfleet-runtime:prebuilt"], "Layers": []}])
    ops = plan(load_case("ubuntu2204-2xa100"), runtime,
               data={**control_data, **DOCKER_MODE, "runtime_image_source": "tarball", "runtime_image_tarball": str(tarball)})
    assert not [op for op in ops if "build" in op.name.lower()]
    load = find(ops, "Load runtime image deepfleet-runtime:prebuilt")
    assert load.shell() == [f"docker load --quiet --input {load.shell()[0].split()[-1]}"]
    assert load.shell()[0].split()[-1].endswith("/runtime.tar")
    assert " deepfleet-runtime:prebuilt -c " in find(ops, "Runtime container deepfleet-runtime").shell()[0]
    assert len(wheelhouse.requests) == 1  # only the host's light wheelhouse: no image wheels to build
    loaded = with_facts(load_case("ubuntu2204-2xa100"), **{"docker.DockerImage": {"*": [{"Id": "sha256:1"}]}})
    again = plan(loaded, runtime, data={**control_data, **DOCKER_MODE, "runtime_image_source": "tarball",
                                        "runtime_image_tarball": str(tarball)})
    assert find(again, "Load runtime image").change == "no"


@pytest.mark.parametrize(("manifest", "message"), [
    ([{"RepoTags": None}], "has no tag"), (None, "is not a `docker save` tarball"),
])
def test_bad_tarballs_are_refused_with_the_fix(tmp_path, manifest, message):
    path = tmp_path / "image.tar"
    if manifest is None:
        path.write_text("not a tarball")
    else:
        _docker_save(path, manifest)
    with pytest.raises(RoleError, match=message):
        tarball_image(path)


def test_switching_modes_stops_the_other_way_of_running(wheelhouse, control_data):
    running_unit = with_facts(load_case("debian12-nogpu"), **{
        "systemd.SystemdStatus": {"*": {"deepfleet-runtime.service": True}},
        "systemd.SystemdEnabled": {"*": {"deepfleet-runtime.service": True}}})
    to_docker = find(plan(running_unit, runtime, data={**control_data, **DOCKER_MODE}),
                     "Stop the runtime's systemd service (Docker mode)")
    assert to_docker.shell() == ["systemctl stop deepfleet-runtime.service", "systemctl disable deepfleet-runtime.service"]
    with_container = with_facts(load_case("debian12-nogpu"), **{"docker.DockerContainer": {"*": _container({})}})
    to_systemd = find(plan(with_container, runtime, data=control_data), "Remove the runtime container (systemd mode)")
    assert to_systemd.shell() == ["docker rm --force deepfleet-runtime"]


def test_unknown_mode_and_image_source_are_refused(wheelhouse, control_data):
    with pytest.raises(RoleError, match="runtime_mode is 'podman'; use 'systemd' or 'docker'"):
        plan(load_case("debian12-nogpu"), runtime, data={**control_data, "runtime_mode": "podman"})
    with pytest.raises(RoleError, match="runtime_image_tarball"):
        plan(load_case("debian12-nogpu"), runtime, data={**control_data, **DOCKER_MODE, "runtime_image_source": "tarball"})


def test_the_image_build_goes_through_the_sites_proxy_with_its_credentials_masked(wheelhouse, control_data):
    proxy = {"proxy_http": "http://user:secret@proxy.hospital.test:3128", "proxy_no_proxy": ["localhost"]}
    ops = plan(load_case("debian12-nogpu"), runtime, data={**control_data, **DOCKER_MODE, **proxy})
    build = find(ops, "Build runtime image").shell()[0]
    assert "--build-arg NO_PROXY=localhost --build-arg no_proxy=localhost" in build
    assert "secret" not in build and build.count("--build-arg *MASKED*") == 2  # HTTP_PROXY and http_proxy
    plain = find(plan(load_case("debian12-nogpu"), runtime, data={**control_data, **DOCKER_MODE}),
                 "Build runtime image").shell()[0]
    assert "--build-arg" not in plain


def test_rollback_in_systemd_mode_restarts_the_unit(control_data):
    ops = plan(load_case("debian12-nogpu"), rollback, data=control_data)  # the case holds no RollbackTarget: not asked
    restart = find(ops, "Restart the runtime on the release and wait until it is ready").shell()
    assert restart[0] == "systemctl restart deepfleet-runtime.service" and "--unit deepfleet-runtime" in restart[1]
