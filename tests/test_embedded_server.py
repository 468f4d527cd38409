"""The embedded server: shared by concurrent processes, robust to SIGKILL, usable as root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from density_db.embedded import EmbeddedServer

DENSITY_DB = [str(Path(sys.executable).with_name("density-db"))]  # the installed console script


def run_density_db(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "DENSITY_DB_URL"}
    environment["DENSITY_DB_HOME"] = str(home)
    return subprocess.run([*DENSITY_DB, *args], env=environment, capture_output=True, text=True, timeout=timeout)


def postmasters(home: Path) -> list[psutil.Process]:
    data_dir = str(home / "pgdata")
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "postgres" and data_dir in (process.info["cmdline"] or []):
            if process.ppid() == 1 or process.parent() is None or process.parent().name() != "postgres":
                found.append(process)
    return found


def test_first_command_initialises_and_starts_the_server(isolated_home: Path) -> None:
    result = run_density_db(isolated_home, "query", "sql", "SELECT count(*) AS frames FROM frame")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["frames", "0"]
    assert (isolated_home / "pgdata" / "PG_VERSION").read_text().strip() == "18"
    status = run_density_db(isolated_home, "db", "status")
    assert "server: running" in status.stdout
    assert "schema revision: 0005" in status.stdout


def test_db_url_is_accepted_by_psql(isolated_home: Path) -> None:
    url = run_density_db(isolated_home, "db", "url").stdout.strip()
    assert url.startswith("postgresql://")
    psql = EmbeddedServer(isolated_home).psql_path()
    answer = subprocess.run([str(psql), url, "-tAc", "SELECT current_database()"], capture_output=True, text=True)
    assert answer.stdout.strip() == "density_db", answer.stderr


def test_two_processes_at_once_share_one_server(isolated_home: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "DENSITY_DB_URL"}
    environment["DENSITY_DB_HOME"] = str(isolated_home)
    command = [*DENSITY_DB, "query", "sql", "SELECT 1 AS one"]
    processes = [
        subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert all(stdout.splitlines() == ["one", "1"] for stdout, _ in outputs)
    assert len(postmasters(isolated_home)) == 1


def test_client_killed_during_first_start_leaves_nothing_stale(isolated_home: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "DENSITY_DB_URL"}
    environment["DENSITY_DB_HOME"] = str(isolated_home)
    for delay in (0.2, 0.6, 1.2):  # during import, initdb, start
        process = subprocess.Popen(
            [*DENSITY_DB, "db", "start"], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
    result = run_density_db(isolated_home, "query", "sql", "SELECT 2 AS two")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["two", "2"]
    assert not list(isolated_home.glob("pgdata.initialising-*"))


def test_server_killed_with_sigkill_is_restarted_by_the_next_command(isolated_home: Path) -> None:
    assert run_density_db(isolated_home, "db", "start").returncode == 0
    [postmaster] = postmasters(isolated_home)
    postmaster.send_signal(signal.SIGKILL)
    postmaster.wait(10)
    assert (isolated_home / "pgdata" / "postmaster.pid").exists()  # stale pid file left behind
    result = run_density_db(isolated_home, "query", "sql", "SELECT 3 AS three")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["three", "3"]


def test_stale_pid_file_naming_a_live_unrelated_process_does_not_block_start(isolated_home: Path) -> None:
    assert run_density_db(isolated_home, "db", "start").returncode == 0
    assert run_density_db(isolated_home, "db", "stop").returncode == 0
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = isolated_home / "pgdata" / "postmaster.pid"
        pid_file.write_text(f"{unrelated.pid}\n{isolated_home / 'pgdata'}\n0\n5432\n\n\n\nready\n")
        result = run_density_db(isolated_home, "db", "start")
        assert result.returncode == 0, result.stderr
        assert run_density_db(isolated_home, "query", "sql", "SELECT 4 AS four").stdout.splitlines() == ["four", "4"]
    finally:
        unrelated.kill()


def test_stop_then_status_says_not_running(isolated_home: Path) -> None:
    assert run_density_db(isolated_home, "db", "start").returncode == 0
    stopped = run_density_db(isolated_home, "db", "stop")
    assert stopped.stdout.strip() == "embedded PostgreSQL stopped"
    assert "server: not running" in run_density_db(isolated_home, "db", "status").stdout
    assert not postmasters(isolated_home)


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the root-specific service user")
def test_as_root_the_server_runs_as_the_service_user(isolated_home: Path) -> None:
    assert run_density_db(isolated_home, "db", "start").returncode == 0
    [postmaster] = postmasters(isolated_home)
    assert postmaster.username() == "density_db"


def test_db_commands_refuse_to_manage_a_configured_url(isolated_home: Path) -> None:
    environment_url = "postgresql://someone@localhost:1/nowhere"
    result = subprocess.run([*DENSITY_DB, "--db", environment_url, "db", "start"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "manages only the embedded server" in result.stderr


def test_db_shell_opens_psql_on_the_catalog(isolated_home: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "DENSITY_DB_URL"}
    environment["DENSITY_DB_HOME"] = str(isolated_home)
    result = subprocess.run(
        [*DENSITY_DB, "db", "shell"],
        env=environment,
        input="SELECT 40 + 2 AS answer;\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "42" in result.stdout
