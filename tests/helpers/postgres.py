"""A real PostgreSQL server (Debian's package) on 127.0.0.1, a free port, its own data folder; stopped and
removed afterwards whatever happens.

initdb and postgres refuse to run as root: as root, they run as the `postgres` user the Debian package
made (runuser). The server takes password logins only (scram-sha-256), so that the tests see the
password in the URL used and never printed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from localnet import free_port

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # the newest first
START_LIMIT_S = 60
USER, PASSWORD, DATABASE = "tuner", "s3cret-Pg-pw", "tuning"


@dataclass(frozen=True)
class Postgres:
    port: int
    data: Path

    def url(self, password: bool = True, driver: str = "psycopg") -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql+{driver}://{USER}{secret}@127.0.0.1:{self.port}/{DATABASE}"


def binary(name: str) -> str | None:
    for folder in BIN_DIRS:
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


def available() -> str | None:
    """Why no server can be started here, or None."""
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not binary(name)]
    if missing:
        return f"PostgreSQL's {', '.join(missing)} not installed (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "no psycopg (tests/requirements.txt)"
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    folder = Path(tempfile.mkdtemp(prefix="byoc-pg-"))  # not under pytest's tmp: the server user must reach it
    data, log = folder / "data", folder / "server.log"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    (folder / "pw").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder / "pw", "postgres", "postgres")
    port = free_port()
    started = False
    try:
        subprocess.run(
            _as_server_user(
                [
                    binary("initdb") or "initdb",
                    "-D",
                    str(data),
                    "-U",
                    USER,
                    f"--pwfile={folder / 'pw'}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off -c max_connections=60"
        started = True
        subprocess.run(
            _as_server_user(
                [
                    binary("pg_ctl") or "pg_ctl",
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=START_LIMIT_S + 30,
        )
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        subprocess.run(
            [binary("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE],
            check=True,
            capture_output=True,
            timeout=60,
            env=env,
        )
        yield Postgres(port, data)
    except subprocess.CalledProcessError as exc:
        text = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        server_log = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        raise RuntimeError(f"PostgreSQL did not start: {text[-2000:]}\n{server_log}") from None
    finally:
        if started:
            _stop(data)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(data: Path) -> None:
    """pg_ctl stop (immediate); if the server is still there, SIGKILL to the postmaster by its pid file."""
    pid_file = data / "postmaster.pid"
    pid = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().splitlines()[0])
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(
            _as_server_user(
                [binary("pg_ctl") or "pg_ctl", "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"]
            ),
            capture_output=True,
            timeout=45,
        )
    if pid is None:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
