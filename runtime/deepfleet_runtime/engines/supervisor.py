"""Supervising a child server process: start it, know when it answers, restart it when it dies.

The child runs in its own process group (so its workers go with it), is considered up once its
health URL answers 200, and is restarted after a crash with a doubling back-off (reset once it
stayed up for a minute). A child that answers health checks but no longer works is caught by an
optional probe (a real request): two failures in a row kill its group, and it is restarted like a
crash. When the child exits, what is left of its group (worker processes) is killed too.
stop() ends the whole group: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Callable

import httpx

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 60.0
HEALTH_INTERVAL_S = 2.0
PROBE_FAILURES = 2  # failed probes in a row before the child counts as hung


class ChildSupervisor:
    """Keeps one child process running and reports whether it is up."""

    def __init__(self, argv: list[str], health_url: str, env: dict[str, str] | None = None,
                 backoff_s: float = 2.0, ready_timeout_s: float = 1800.0, name: str = "child",
                 probe: Callable[[], bool] | None = None, probe_interval_s: float = 0.0):
        self.argv, self.health_url, self.env = list(argv), health_url, env
        self.probe, self.probe_interval_s = probe, probe_interval_s
        self.hangs = 0  # children killed because the probe failed
        self.backoff_s, self.ready_timeout_s, self.name = backoff_s, ready_timeout_s, name
        self.restarts = 0  # starts after the first
        self.last_exit_code: int | None = None
        self._process: subprocess.Popen | None = None
        self._up = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def up(self) -> bool:
        return self._up.is_set()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name=f"supervise-{self.name}", daemon=True)
        self._thread.start()

    def wait_up(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    def stop(self, grace_s: float = 10.0) -> None:
        self._stopping.set()
        self._terminate(grace_s)
        if self._thread:
            self._thread.join(timeout=grace_s + 5)

    def _supervise(self) -> None:
        backoff = self.backoff_s
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._process = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
            except OSError as exc:
                log.error("%s could not start (%s): %s", self.name, self.argv[0], exc)
                self.last_exit_code = None
            else:
                log.info("%s started (pid %d)", self.name, self._process.pid)
                self._watch(self._process)
                self.last_exit_code = self._process.returncode
            self._up.clear()
            self._kill_group_leftovers()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = self.backoff_s
            log.error("%s exited with %s; restarting in %.1f s", self.name, self.last_exit_code, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            self.restarts += 1

    def _watch(self, process: subprocess.Popen) -> None:
        """Poll health until the child answers (or dies, or takes too long), then wait for its exit."""
        deadline = time.monotonic() + self.ready_timeout_s
        while process.poll() is None and not self._stopping.is_set():
            if self._healthy():
                self._up.set()
                break
            if time.monotonic() > deadline:
                log.error("%s did not answer %s within %.0f s; killing it", self.name, self.health_url,
                          self.ready_timeout_s)
                self._terminate(10.0)
                break
            time.sleep(0.2)
        next_check = time.monotonic() + HEALTH_INTERVAL_S
        next_probe, failures = time.monotonic() + self.probe_interval_s, 0
        while process.poll() is None and not self._stopping.is_set():
            time.sleep(0.2)
            if process.poll() is not None:
                break
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + HEALTH_INTERVAL_S
                # alive but not answering: not ready (the probe decides whether it is hung)
                self._up.set() if self._healthy() else self._up.clear()
            if self.probe and self.probe_interval_s and self._up.is_set() and time.monotonic() >= next_probe:
                failures = 0 if self.probe() else failures + 1
                next_probe = time.monotonic() + self.probe_interval_s
                if failures >= PROBE_FAILURES and process.poll() is None and not self._stopping.is_set():
                    log.error("%s answers health checks but its probe failed %d times; killing it",
                              self.name, failures)
                    self._up.clear()
                    self.hangs += 1
                    self._kill_group(process, signal.SIGKILL)
        process.wait()

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.health_url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _kill_group(self, process: subprocess.Popen, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    def _kill_group_leftovers(self) -> None:
        """The child is gone; its workers (same process group) must not outlive it."""
        if self._process is not None:
            self._kill_group(self._process, signal.SIGKILL)

    def _terminate(self, grace_s: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
