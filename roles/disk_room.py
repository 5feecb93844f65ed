"""Room on disk for model releases, decided from facts before a push sends its first byte.

Where releases live (`deepfleet_models_dir`, else <deepfleet_home>/models; a data disk for big
models), one filesystem holds three things: the push in progress (staged in
`.<name>@<release>.partial`), the releases kept for rollback (`model_keep_releases`, the current
one included) and, for the next update, room for one more push before activation removes the
oldest. Two checks, both with the numbers and what is missing:

- now: the bytes still to send, plus one release's size kept free for the next push;
- steady state: the filesystem, counting what the kept releases already hold, must fit
  `model_keep_releases` releases of this size plus one staging; otherwise a later update fails
  half-way, after hours of copying.

`deepfleet plan` runs the same check (the push operation decides it while planning), so a data
disk that is too small is reported before anything is copied. Pure functions: tested against facts.
"""

from __future__ import annotations

from collections.abc import Mapping

GIB = 1 << 30


def size_text(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB else f"{nbytes / (1 << 20):.1f} MiB"


def push_room_problem(where: str, free: int, to_send: int, release_size: int, keep: int) -> str | None:
    """Why this push would leave no room for the next one, with the numbers; None when it fits."""
    needed = to_send + release_size
    if free >= needed:
        return None
    return (f"not enough disk for the model push in {where}: {size_text(free)} free, the push "
            f"needs {size_text(to_send)} plus {size_text(release_size)} kept free for the next release = "
            f"{size_text(needed)}. Free {size_text(needed - free)} on the host (it keeps "
            f"model_keep_releases={keep} releases) and deploy again")


def kept_room_problem(where: str, free: int, staged: int, release_size: int, kept: Mapping[str, int],
                      release: str, keep: int) -> str | None:
    """Why the filesystem cannot hold `keep` releases of this size plus a staging, or None.

    `kept` maps the host's complete releases to their bytes, `staged` is what this push already
    holds; both count as room, since activation removes releases past `keep`.
    """
    ours = sum(size for name, size in kept.items() if name != release) + staged + kept.get(release, 0)
    capacity = free + ours
    needed = (keep + 1) * release_size
    if capacity >= needed:
        return None
    return (f"{where} cannot hold model_keep_releases={keep} releases of {size_text(release_size)} plus the staging "
            f"of the next one ({size_text(needed)}): the filesystem has {size_text(free)} free and the kept releases "
            f"hold {size_text(ours)}, {size_text(needed - capacity)} missing. Give deepfleet_models_dir a larger "
            "filesystem, or lower model_keep_releases")


def check_model_disk(host_name: str, where: str, state: Mapping, to_send: int, release_size: int, release: str,
                     keep: int) -> str | None:
    """The first problem of the two checks for one host (its ModelReleaseState fact), as the error to show."""
    staged = sum(state.get("staged", {}).values())
    problem = (push_room_problem(where, state["free_bytes"], to_send, release_size, keep)
               or kept_room_problem(where, state["free_bytes"], staged, release_size,
                                    state.get("kept_bytes", {}), release, keep))
    return f"{host_name}: {problem}" if problem else None
