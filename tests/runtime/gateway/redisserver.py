"""A real redis-server (Debian's package, installed by `make host-tools`) started by a test on
127.0.0.1, with a password, append-only persistence and, if asked, TLS with a certificate from the
test CA: the store the fleet's gateways share, as roles/limits_store.py configures it."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    """One redis-server process; `stop()` kills it (kill -9: the store lost), `start()` brings it
    back on the same port with the same data directory."""

    def __init__(self, root: Path, tls: tuple[Path, Path, Path] | None = None):
        if not Path(REDIS_SERVER).exists() and not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed: run `make host-tools` (apt-get install redis-server)")
        self.root, self.tls = Path(root), tls
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_urlsafe(24)
        (self.root / "password").write_text(self.password + "\n")
        self.process: subprocess.Popen | None = None

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def section(self, gateways: int = 2, **extra) -> dict:
        """gateway.yaml's limits_store section for this server."""
        # 2 s, not the production 0.5: no test here needs the store to time out (a stopped store is
        # killed, so connections are refused at once), and a test process that shares two loaded cores
        # with an in-process engine can take over 0.3 s to finish a localhost connect
        section = {"url": self.url, "password_file": str(self.password_file), "gateways": gateways,
                   "timeout_s": 2.0, "retry_s": 0.2}
        if self.tls:
            section["ca"] = str(self.tls[0])
        return section | extra

    def start(self) -> "RedisServer":
        config = [f"bind 127.0.0.1", "protected-mode yes", f"dir {self.root}", "appendonly yes",
                  "appendfsync everysec", 'save ""', f"requirepass {self.password}", "daemonize no",
                  f"logfile {self.root / 'redis.log'}"]
        if self.tls:
            ca, cert, key = self.tls
            config += ["port 0", f"tls-port {self.port}", f"tls-cert-file {cert}", f"tls-key-file {key}",
                       f"tls-ca-cert-file {ca}", "tls-auth-clients no", 'tls-protocols "TLSv1.3"']
        else:
            config.append(f"port {self.port}")
        conf = self.root / "redis.conf"
        conf.write_text("\n".join(config) + "\n")
        conf.chmod(0o600)
        self.process = subprocess.Popen([REDIS_SERVER, str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "redis.log").read_text()[-2000:] if (self.root / "redis.log").exists() else ""
                    raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
