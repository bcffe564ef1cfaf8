"""A throwaway PostgreSQL cluster for tests: Debian's binaries (/usr/lib/postgresql/<v>/bin,
installed by .ci/system-deps.sh), initdb into a temp folder, the server on 127.0.0.1 and a free
port, a superuser `dspo` with a random password (scram-sha-256), one database `prefect`.

PostgreSQL refuses to run as root: as root every binary runs as user `postgres` (runuser), and
the folder is that user's. The server is stopped by the pid it wrote (SIGINT: fast shutdown,
SIGKILL after a timeout) and the folder removed.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    return Path(found[-1]).parent if found else None


class ThrowawayPostgres:
    """start() -> the cluster runs; url has the password; stop() ends it and removes its folder."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="dspo-pg-"))
        self.data = self.root / "data"
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.pid: int | None = None
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.root.chmod(0o700)

    @property
    def url(self) -> str:
        return f"postgresql://dspo:{self.password}@127.0.0.1:{self.port}/prefect"

    def _run(self, argv: list, **kwargs) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PGPASSWORD": self.password}
        result = subprocess.run([*self._as_user, *map(str, argv)], env=env, cwd=self.root, capture_output=True,
                                text=True, timeout=120, **kwargs)
        if result.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-3000:] if (self.root / "server.log").exists() \
                else ""
            raise RuntimeError(f"{argv[0]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}\n{log}")
        return result

    def start(self) -> "ThrowawayPostgres":
        password_file = self.root / "pw"
        password_file.write_text(self.password + "\n")
        if self._as_user:
            shutil.chown(password_file, "postgres")
        self._run([self.bin / "initdb", "-D", self.data, "-U", "dspo", f"--pwfile={password_file}",
                   "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions", "--no-sync"])
        password_file.unlink()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        # No durability needed for a test cluster: fsync off makes its commits cheap.
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run([self.bin / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-o", options, "-w",
                   "-t", "60", "start"])
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self._run([self.bin / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "dspo", "prefect"])
        return self

    def stop(self, timeout: float = 30) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and _alive(self.pid):
                    time.sleep(0.2)
                if _alive(self.pid):
                    os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not our child: its parent reaps it) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
