"""Plan a deploy against recorded facts, without a host: pyinfra's JSON-fixture style for whole roles.

A case file (tests/roles/hosts/<case>.json) holds the facts one host would answer, keyed like
pyinfra's own operation fixtures: `"server.Arch": "x86_64"`, facts with arguments keyed by them
(`"files.File": {"path=/etc/x": null, "*": null}`, "*" answering every other argument), and
`{"$output": [...]}` for a command's raw output, parsed by the fact class itself (so the real
parsers of /etc/os-release, sysfs and nvidia-smi output run). A fact the case does not hold is an
error naming it: the plan never invents host state.

`plan()` runs deploy functions or deploy files exactly as pyinfra's prepare stage does, then lists
every operation in order with the commands it would run, file uploads with their content. With
`changed=[...]` it also decides the conditional operations (`_if`) as the run would, when exactly
the operations named like those changed.
`expect_plan()` compares a plan with its reviewed copy in tests/roles/plans/ (the exact commands
and files a role produces for one case); DEEPFLEET_WRITE_PLANS=1 rewrites the copies, for review.
"""

from __future__ import annotations

import copy
import io
import json
import os
import runpy
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from inspect import signature
from pathlib import Path
from unittest import mock

from pyinfra.api import Config, FileUploadCommand, FunctionCommand, State, StringCommand
from pyinfra.api.facts import ShortFactBase
from pyinfra.api.host import Host
from pyinfra.api.inventory import Inventory
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_host, ctx_state

from deepfleet.inventoryfile import load_inventory

HOSTS = Path(__file__).resolve().parent / "hosts"
PLANS = Path(__file__).resolve().parent / "plans"


class MissingFact(LookupError):
    """The case holds no answer for a fact a role asked for."""


@dataclass
class PlannedOp:
    name: str  # "<deploy name> | <operation name>"
    change: str  # "yes", "no", or "conditional" (an `_if` decides at run time)
    commands: list = field(default_factory=list)  # shell strings; {"upload": dest, ...} for files
    notes: list[str] = field(default_factory=list)  # host.noop messages (why nothing to do)

    def shell(self) -> list[str]:
        return [command for command in self.commands if isinstance(command, str)]

    def uploads(self) -> dict[str, str]:
        """{remote path: content (text) or local file name}."""
        return {c["upload"]: c.get("content", c.get("from")) for c in self.commands
                if isinstance(c, dict) and "upload" in c}


def load_case(name: str) -> dict:
    """The facts of tests/roles/hosts/<name>.json."""
    return json.loads((HOSTS / f"{name}.json").read_text())["facts"]


def with_facts(facts: dict, **changes) -> dict:
    """A copy of `facts` with some facts replaced (keys are fact names)."""
    updated = copy.deepcopy(facts)
    updated.update(changes)
    return updated


def plan(facts: dict, deploy: Callable | Path, data: dict | None = None, inventory: Path | None = None,
         host_name: str | None = None, changed: list[str] | None = None) -> list[PlannedOp]:
    """The operations `deploy` (a @deploy function or a deploy file) would run on one host: `host_name`
    of `inventory` (which may hold several; the others are only read, e.g. by the topology), or
    the only one. With `changed`, conditional ones are decided ("yes"/"no") as if only the
    operations whose names contain one of those strings changed the host."""
    if inventory is not None:
        inv = load_inventory(inventory, data)
    else:
        inv = Inventory(([(host_name or "h1", dict(data or {}))], {}))
    state = State(inv, Config())
    state.set_stage(StateStage.Prepare)
    notes: dict[str, list[str]] = defaultdict(list)

    def get_fact(host, cls, *args, **kwargs):
        return _answer(facts, cls, args, kwargs)

    def noop(host, description):
        notes[host.current_op_hash].append(description)

    (target,) = [inv.get_host(host_name)] if host_name else list(inv)
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(Host, "get_fact", get_fact))
        stack.enter_context(mock.patch.object(Host, "noop", noop))
        stack.enter_context(ctx_state.use(state))
        stack.enter_context(ctx_host.use(target))
        if callable(deploy):
            deploy()
        else:
            runpy.run_path(str(deploy), run_name="__deploy__")
        planned = []
        for op_hash in state.get_op_order():
            op_data = state.ops[target].get(op_hash)
            if op_data is None:
                continue
            is_change = op_data.operation_meta._maybe_is_change
            conditional = bool(op_data.global_arguments.get("_if"))
            commands = [_describe(command) for command in op_data.command_generator()] if is_change else []
            planned.append(PlannedOp(sorted(state.op_meta[op_hash].names)[0],
                                     ("conditional" if conditional else "yes") if is_change else "no",
                                     commands, notes.get(op_hash, [])))
        if changed is not None:
            _decide_conditions(state, target, planned, changed)
    return planned


def _decide_conditions(state: State, target: Host, planned: list[PlannedOp], changed: list[str]) -> None:
    """Complete every operation as changed or not, then evaluate the conditional ones' `_if`."""
    ops = [state.ops[target][op_hash] for op_hash in state.get_op_order() if op_hash in state.ops[target]]
    for op_data, op in zip(ops, planned):
        did_change = any(name in op.name for name in changed)
        op_data.operation_meta.set_complete(True, ["changed"] if did_change else [], None)
    for op_data, op in zip(ops, planned):
        if op.change == "conditional":
            conditions = op_data.global_arguments["_if"]
            conditions = conditions if isinstance(conditions, list) else [conditions]
            op.change = "yes" if all(condition() for condition in conditions) else "no"


def changed(ops: list[PlannedOp]) -> list[str]:
    """Names of the operations that would (or could) change the host."""
    return [op.name for op in ops if op.change != "no"]


def shell_commands(ops: list[PlannedOp]) -> list[str]:
    """Every shell command the planned operations would run, in order."""
    return [command for op in ops for command in op.shell()]


def find(ops: list[PlannedOp], name: str) -> PlannedOp:
    """The one planned operation whose name contains `name`."""
    matches = [op for op in ops if name in op.name]
    if len(matches) != 1:
        raise AssertionError(f"{len(matches)} operations are named like {name!r}: {[op.name for op in ops]}")
    return matches[0]


def expect_plan(ops: list[PlannedOp], name: str) -> None:
    """Assert `ops` equal the reviewed plan tests/roles/plans/<name>.json."""
    path = PLANS / f"{name}.json"
    actual = [{"name": op.name, "change": op.change, "commands": op.commands, "notes": op.notes} for op in ops]
    if os.environ.get("DEEPFLEET_WRITE_PLANS"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(actual, indent=1) + "\n")
    expected = json.loads(path.read_text()) if path.exists() else None
    assert actual == expected, f"the plan differs from {path}; review, then DEEPFLEET_WRITE_PLANS=1 rewrites it"


def _answer(facts: dict, cls, args, kwargs):
    if isinstance(cls, type) and issubclass(cls, ShortFactBase):
        return cls().process_data(_answer(facts, cls.fact, args, kwargs))
    name = cls.name
    if name not in facts:
        raise MissingFact(f"the case holds no fact {name}; add it to the case file")
    value = facts[name]
    kwargs = {key: val for key, val in kwargs.items() if not key.startswith("_")}
    arguments = signature(cls.command).bind(None, *args, **kwargs).arguments if (args or kwargs) else {}
    arguments.pop("self", None)
    if arguments:
        key = ",".join(f"{arg}={val}" for arg, val in sorted(arguments.items()))
        if not isinstance(value, dict) or not (key in value or "*" in value):
            raise MissingFact(f"the case holds no answer for {name}({key}); add \"{key}\" or \"*\"")
        value = value[key] if key in value else value["*"]
    if isinstance(value, dict) and "$output" in value:
        lines = value["$output"]
        lines = lines.splitlines() if isinstance(lines, str) else lines
        fact = cls()
        return fact.process(lines) if lines else fact.default()
    return copy.deepcopy(value)


def _describe(command):
    if isinstance(command, StringCommand):
        return command.get_masked_value()
    if isinstance(command, FileUploadCommand):
        if isinstance(command.src, io.StringIO | io.BytesIO):
            content = command.src.getvalue()
            return {"upload": command.dest, "content": content.decode() if isinstance(content, bytes) else content}
        return {"upload": command.dest, "from": Path(str(command.src)).name}
    if isinstance(command, FunctionCommand):
        return {"function": command.function.__name__}
    return repr(command)
