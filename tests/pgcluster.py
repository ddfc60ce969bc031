"""A throwaway PostgreSQL cluster on loopback, for the tests of the PostgreSQL store.

Used as a module by the fault test (which stops and starts its own cluster) and as a script by
`.ci/run`:

    python3 tests/pgcluster.py start DIR   # initdb + start; prints the connection URL
    python3 tests/pgcluster.py stop DIR

Standard library only: `.ci/run` calls it before any package is installed. The cluster listens
on 127.0.0.1 only (trust authentication, which is safe on loopback in a throwaway cluster) and
keeps its socket inside DIR. initdb refuses to run as root, so as root the cluster belongs to
the `postgres` user that Debian's postgresql package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

USER = "threadloom"


def bin_dir() -> Path | None:
    """The directory of pg_ctl: PATH first, then Debian's versioned directories (newest)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent

    def version(pg_ctl: str) -> int:
        name = Path(pg_ctl).parent.parent.name
        return int(name) if name.isdigit() else 0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version)
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One cluster in `root` (created if missing): data in root/data, socket in root."""

    def __init__(self, root: str | os.PathLike[str], port: int | None = None) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        port_file = self.root / "port"
        if port is None and port_file.exists():
            port = int(port_file.read_text())
        self.port = port or free_port()
        found = bin_dir()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (no pg_ctl on PATH or in /usr/lib)")
        self.bin = found

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                "--locale=C", "--no-sync",
            )  # fmt: skip
        (self.root / "port").write_text(str(self.port))

    def start(self) -> str:
        """Starts the cluster (initializing it first if needed) and returns its URL."""
        self.init()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c max_connections=200 -c shared_buffers=128MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        self.wait()
        return self.url

    def wait(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ready = self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False)
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start; see {self.log}")
            time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def running(self) -> bool:
        status = self._run("pg_ctl", "-D", str(self.data), "status", check=False)
        return status.returncode == 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print(f"usage: {argv[0]} start|stop DIR", file=sys.stderr)
        return 2
    cluster = Cluster(argv[2])
    if argv[1] == "start":
        print(cluster.start())
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
