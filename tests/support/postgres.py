"""A throwaway PostgreSQL cluster on 127.0.0.1, for the team-MLflow test (backend store).

Debian's `postgresql` package (`make test-deps` installs it) provides initdb and pg_ctl under
/usr/lib/postgresql/VERSION/bin, off PATH. The cluster lives in a fresh temporary folder, listens
on a free TCP port on 127.0.0.1 and on a Unix socket in that folder (never /var/run/postgresql),
uses password authentication, and is deleted on exit.

    with PostgresServer() as pg:
        pg.uri  # postgresql://mlflow:…@127.0.0.1:PORT/mlflow

PostgreSQL refuses to run as root: as root, every server command runs as the `postgres` user
(created by the Debian package) and the folder is handed to it.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.support.containers import free_port

SERVICE_USER = "postgres"  # the account the Debian package creates


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server programs are missing or cannot run here; the message says why."""


def find_bindir() -> Path:
    """The folder holding initdb and pg_ctl: $PG_BINDIR, the newest Debian install, else PATH."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted(debian.iterdir(), key=lambda p: _version_key(p.name), reverse=True)
        candidates += [str(v / "bin") for v in versions]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    raise PostgresUnavailable("PostgreSQL server programs (initdb, pg_ctl) not found: "
                              "`make test-deps` or `apt-get install postgresql` (Debian)")


def _service_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        raise PostgresUnavailable(f"running as root, and there is no '{SERVICE_USER}' user to run "
                                  "PostgreSQL as (it refuses root)") from exc


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


class PostgresServer:
    """initdb + pg_ctl start on 127.0.0.1:PORT, one database, one password user; gone on exit."""

    def __init__(self, database: str = "mlflow", user: str = "mlflow",
                 port: int | None = None, start_timeout: int = 60) -> None:
        self.database = database
        self.user = user
        self.password = secrets.token_hex(12)
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.bindir = find_bindir()
        self._account = _service_account() if os.geteuid() == 0 else None
        self._run_as = self._account.pw_name if self._account else None
        # pytest's tmp folders are 0700 root-owned: the postgres user could not enter them.
        self.root = Path(tempfile.mkdtemp(prefix="mhist-pg-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._started = False

    @property
    def uri(self) -> str:
        """For MLflow's --backend-store-uri (SQLAlchemy picks psycopg 3 for postgresql://)."""
        return (f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{self.database}")

    def start(self) -> PostgresServer:
        try:
            self._prepare_folder()
            self._initdb()
            # fsync off: the cluster is thrown away, and MLflow's schema migrations commit many
            # small transactions that would otherwise each wait for the disk.
            self._pg_ctl("start", "-w", "-t", str(self.start_timeout), "-l", str(self.log_path),
                         "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                               "-c synchronous_commit=off -c full_page_writes=off")
            self._started = True
            self._client("createdb", self.database)
        except (OSError, subprocess.SubprocessError) as exc:
            log = self.logs()[-3000:]  # read before stop() deletes the folder
            self.stop()
            raise PostgresUnavailable(f"PostgreSQL did not start: {exc}\n{log}") from exc
        return self

    def _prepare_folder(self) -> None:
        if self._account:
            os.chown(self.root, self._account.pw_uid, self._account.pw_gid)

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._account:
            os.chown(pwfile, self._account.pw_uid, self._account.pw_gid)
        pwfile.chmod(0o600)
        try:
            # Password auth on every connection, as a shared server would have it.
            self._server_cmd("initdb", "-D", str(self.data_dir), "-U", self.user,
                             f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                             "--locale=C.UTF-8", "--no-sync")
        finally:
            pwfile.unlink(missing_ok=True)

    def _pg_ctl(self, *args: str) -> None:
        self._server_cmd("pg_ctl", "-D", str(self.data_dir), *args)

    def _server_cmd(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / program), *args], capture_output=True, text=True,
            user=self._run_as, cwd=self.root, timeout=self.start_timeout + 30,
            env={**os.environ, "HOME": str(self.root), "LC_ALL": "C.UTF-8"},
        )
        if result.returncode != 0:
            raise subprocess.SubprocessError(
                f"{program} exited {result.returncode}: {result.stderr.strip()[-2000:]}")

    def _client(self, program: str, *args: str) -> None:
        """createdb/psql over TCP as the cluster's user, like any client would connect."""
        result = subprocess.run(
            [str(self.bindir / program), "-h", "127.0.0.1", "-p", str(self.port),
             "-U", self.user, *args],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PGPASSWORD": self.password},
        )
        if result.returncode != 0:
            raise subprocess.SubprocessError(
                f"{program} exited {result.returncode}: {result.stderr.strip()[-2000:]}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self._started:
            try:
                # immediate: no shutdown checkpoint for data that is deleted next.
                self._pg_ctl("stop", "-m", "immediate", "-w")
            except (OSError, subprocess.SubprocessError):
                self._kill_postmaster()
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        """Stop the server this object started, by the pid in its postmaster.pid (immediate)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            pass

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
