"""Connecting to the catalog and keeping its schema at the expected revision.

:func:`open_database` is what commands call: it resolves the settings to a
URL (starting the embedded server when no URL is given), makes a SQLAlchemy
engine on psycopg 3, and brings an empty database to the current schema.  A
database at an older revision is never changed silently: the user is told to
run ``density-db db upgrade``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from density_db.config import Settings
from density_db.errors import DatabaseError, SchemaVersionError

logger = logging.getLogger(__name__)

SCHEMA_LOCK_KEY = 0x64656E73  # pg_advisory_lock key: one schema change at a time
_OUR_TABLES = {"exposure", "frame", "model", "run", "density_result", "failure", "campaign", "campaign_item"}


@dataclass(frozen=True)
class Database:
    """An engine on the catalog, and the URL it was made from (for messages and psql)."""

    engine: Engine
    url: URL

    @property
    def display_url(self) -> str:
        """The URL with any password hidden, safe to print."""
        return self.url.render_as_string(hide_password=True)

    @property
    def libpq_url(self) -> str:
        """The URL in the form psql and other libpq clients accept (password included)."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> URL:
    """Parse a PostgreSQL URL and select the psycopg 3 driver.

    ``postgresql://`` and ``postgres://`` URLs (what psql takes) work as given.

    Raises
    ------
    DatabaseError
        If the URL cannot be parsed or names another database system.
    """
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    except sa.exc.ArgumentError as error:
        raise DatabaseError(f"cannot parse database URL {url!r}: {error}") from None
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseError(
            f"density-db needs PostgreSQL (14 or newer); {parsed.get_backend_name()!r} URLs are not supported"
        )
    return parsed.set(drivername="postgresql+psycopg")


def resolve_url(settings: Settings) -> URL:
    """The catalog's URL: the configured one, else the embedded server's (started if needed)."""
    if settings.database_url is not None:
        return sqlalchemy_url(settings.database_url)
    from density_db.embedded import EmbeddedServer

    server = EmbeddedServer(settings.home)
    return sqlalchemy_url(server.url(server.ensure_running()))


def connect(url: URL) -> Database:
    """Make an engine and check that the server answers.

    Raises
    ------
    DatabaseError
        If the server cannot be reached; the message names the URL without its password.
    """
    engine = sa.create_engine(url, pool_pre_ping=True)
    database = Database(engine=engine, url=url)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as error:
        engine.dispose()
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise DatabaseError(f"cannot connect to the database at {database.display_url}: {reason}") from None
    return database


def open_database(settings: Settings, *, ensure_schema: bool = True) -> Database:
    """Connect to the catalog; with ``ensure_schema``, create the schema in an empty database.

    Raises
    ------
    DatabaseError
        If the server cannot be reached.
    SchemaVersionError
        If the database is at another schema revision than this density-db.
    """
    database = connect(resolve_url(settings))
    if ensure_schema:
        check_schema(database, create_if_empty=True)
    return database


# -- schema revisions -------------------------------------------------------------------


def alembic_config(database: Database):  # -> alembic.config.Config (imported lazily)
    """Alembic configuration for the revisions shipped in ``density_db.migrations``."""
    from alembic.config import Config

    script_location = Path(importlib.import_module("density_db.migrations").__file__).parent
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["engine"] = database.engine
    return config


def head_revision(database: Database) -> str:
    """The newest revision shipped with this density-db."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(database)).get_current_head()


def current_revision(database: Database) -> str | None:
    """The database's revision, or ``None`` when Alembic has never run there."""
    with database.engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(database: Database, revision: str = "head") -> None:
    """Apply revisions up to ``revision`` (one process at a time, under an advisory lock)."""
    from alembic import command

    with _schema_lock(database):
        command.upgrade(alembic_config(database), revision)


def downgrade(database: Database, revision: str) -> None:
    """Revert revisions down to ``revision`` (``base`` removes every table)."""
    from alembic import command

    with _schema_lock(database):
        command.downgrade(alembic_config(database), revision)


def check_schema(database: Database, *, create_if_empty: bool) -> None:
    """Make sure the database is at the head revision.

    An empty database is brought to the head when ``create_if_empty``; one at
    an older revision raises, telling the user to run ``density-db db upgrade``.
    Anything short of the head is looked at again under the schema lock, so that
    a process starting while another creates the schema waits for it and then
    finds the finished schema, not a half-seen one.
    """
    head = head_revision(database)
    if current_revision(database) == head:
        return
    with _schema_lock(database):
        current = current_revision(database)
        if current == head:
            return
        if current is None:
            _create_schema(database, create_if_empty=create_if_empty)
            return
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config(database))
    known = {script.revision for script in scripts.walk_revisions()}
    if current in known:
        raise SchemaVersionError(
            f"the database schema is at revision {current}, this density-db needs {head}: "
            "run `density-db db upgrade` (back up the database first if it matters)"
        )
    raise SchemaVersionError(
        f"the database schema is at revision {current}, which this density-db does not know: "
        "it was written by a newer density-db; upgrade density-db"
    )


def _create_schema(database: Database, *, create_if_empty: bool) -> None:
    """Bring a database with no revision to the head; the caller holds the schema lock."""
    from alembic import command

    with database.engine.connect() as connection:
        foreign = _OUR_TABLES & set(sa.inspect(connection).get_table_names())
    if foreign:
        raise SchemaVersionError(
            f"the database at {database.display_url} has tables named like density-db's "
            f"({', '.join(sorted(foreign))}) but no schema revision; use an empty database"
        )
    if not create_if_empty:
        raise SchemaVersionError(
            f"the database at {database.display_url} has no density-db schema; run `density-db db upgrade`"
        )
    logger.info("creating the density-db schema in %s", database.display_url)
    command.upgrade(alembic_config(database), "head")


@contextlib.contextmanager
def _schema_lock(database: Database) -> Iterator[None]:
    """Session-level advisory lock so that concurrent first uses create the schema once."""
    with database.engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        try:
            yield
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
