"""The record of a rollout (or of a rollback of one): its options, per replica the batch, outcome,
step and the releases before and after; kept on the control machine as
<state>/rollouts/<inventory>/<id>.json, the latest also as <state>/rollouts/<inventory>.json.
`deepfleet rollout --resume` goes on from it, `deepfleet rollback --rollout ID` undoes what it moved."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .atomicfile import write_atomic
from .paths import state_dir


@dataclass
class HostResult:
    name: str
    batch: int = 0
    outcome: str = "not reached"  # updated | unchanged | up to date | failed | rolled back | not reached
    step: str = ""  # the last step it went through (or failed at)
    before: str | None = None  # runtime release ids
    after: str | None = None
    seconds: float = 0.0
    detail: str = ""


@dataclass
class RolloutOptions:
    """The command line of one rollout (kept in its record, so `--resume` goes on with the same)."""

    batch: str = "1"
    max_failures: int = 0
    max_fail_percent: float | None = None
    min_serving: int = 1
    bake_s: float = 0.0
    pause_after: int | None = None


@dataclass
class RolloutReport:
    id: str = ""
    kind: str = "rollout"  # rollout | rollback (of rollout `of`)
    of: str | None = None
    options: RolloutOptions = field(default_factory=RolloutOptions)
    hosts: list[HostResult] = field(default_factory=list)
    status: str = "running"  # running | done | paused | halted | finished with failures | interrupted
    last_batch: int = 0
    failed_batches: int = 0
    seconds: float = 0.0

    @property
    def halted(self) -> bool:
        return self.status == "halted"

    @property
    def failure(self) -> HostResult | None:
        return next((h for h in self.hosts if h.outcome == "failed"), None)

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "of": self.of, "options": self.options.__dict__,
                "status": self.status, "last_batch": self.last_batch, "hosts": [h.__dict__ for h in self.hosts],
                "failed_batches": self.failed_batches, "halted": self.halted, "seconds": round(self.seconds, 1)}

    @classmethod
    def from_dict(cls, record: dict) -> RolloutReport:
        return cls(record["id"], record.get("kind", "rollout"), record.get("of"), RolloutOptions(**record["options"]),
                   [HostResult(**h) for h in record["hosts"]], record["status"], record["last_batch"],
                   record.get("failed_batches", 0), record.get("seconds", 0.0))


def records_dir(inventory: Path) -> Path:
    return state_dir() / "rollouts" / inventory.stem


def save(report: RolloutReport, inventory: Path) -> Path:
    """Write the record (atomically) under its id and as the inventory's latest; its path."""
    text = json.dumps(report.as_dict(), indent=1) + "\n"
    path = records_dir(inventory) / f"{report.id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
    write_atomic(state_dir() / "rollouts" / f"{inventory.stem}.json", text)
    return path


def load(inventory: Path, rollout_id: str | None = None) -> RolloutReport:
    """The record of rollout `rollout_id` of this inventory (default: the latest); ValueError naming
    the ids kept when there is none."""
    path = records_dir(inventory) / f"{rollout_id}.json" if rollout_id else \
        state_dir() / "rollouts" / f"{inventory.stem}.json"
    if not path.is_file():
        kept = sorted(p.stem for p in records_dir(inventory).glob("*.json"))
        raise ValueError(f"no rollout {rollout_id or 'record'} for {inventory.name} in {path.parent}"
                         + (f"; kept: {', '.join(kept)}" if kept else "; no rollout has run from this machine"))
    return RolloutReport.from_dict(json.loads(path.read_text()))
