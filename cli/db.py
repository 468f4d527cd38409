"""``density-db db``: the embedded server's life cycle, schema revisions and analysts' roles."""

from __future__ import annotations

import os
import shutil

import click

from density_db.cli.context import AppContext, pass_app
from density_db.errors import DensityDBError


@click.group()
def db() -> None:
    """Manage the database: embedded server, URL, psql shell, schema revisions, read-only roles."""


def _embedded_server(app: AppContext):
    if not app.settings.uses_embedded_server:
        raise DensityDBError(
            "a database URL is configured (--db or DENSITY_DB_URL); this command manages only the embedded server"
        )
    from density_db.embedded import EmbeddedServer

    return EmbeddedServer(app.settings.home)


@db.command()
@pass_app
def start(app: AppContext) -> None:
    """Start the embedded PostgreSQL server (initialising it on first use)."""
    server = _embedded_server(app)
    status = server.ensure_running()
    click.echo(f"embedded PostgreSQL running: pid {status.pid}, data {status.data_dir}, socket {status.socket_dir}")


@db.command()
@pass_app
def stop(app: AppContext) -> None:
    """Stop the embedded server (ends the sessions of any other density-db process)."""
    stopped = _embedded_server(app).stop()
    click.echo("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")


@db.command()
@pass_app
def status(app: AppContext) -> None:
    """Say where the catalog is and whether its server is up, with the schema revision."""
    from density_db.database import connect, current_revision, head_revision, sqlalchemy_url

    if app.settings.uses_embedded_server:
        server = _embedded_server(app)
        state = server.status()
        click.echo(f"embedded server home: {app.settings.home}")
        if state is None:
            click.echo("server: not running (any density-db command starts it)")
            return
        click.echo(f"server: running, pid {state.pid}, socket {state.socket_dir}")
        url = sqlalchemy_url(server.url(state))
    else:
        url = sqlalchemy_url(app.settings.database_url)
    database = connect(url)
    with database.engine.connect() as connection:
        version = connection.exec_driver_sql("SHOW server_version").scalar()
    click.echo(f"database: {database.display_url} (PostgreSQL {version})")
    click.echo(f"schema revision: {current_revision(database) or 'none'} (this density-db: {head_revision(database)})")


@db.command()
@click.option("--sqlalchemy", "for_sqlalchemy", is_flag=True, help="Print the SQLAlchemy form (postgresql+psycopg://).")
@pass_app
def url(app: AppContext, for_sqlalchemy: bool) -> None:
    """Print the catalog's URL (for psql, pandas, any PostgreSQL client)."""
    from density_db.database import resolve_url

    resolved = resolve_url(app.settings)
    if not for_sqlalchemy:
        resolved = resolved.set(drivername="postgresql")
    click.echo(resolved.render_as_string(hide_password=False))


@db.command()
@pass_app
def shell(app: AppContext) -> None:
    """Open psql on the catalog."""
    database = app.open_database()
    if app.settings.uses_embedded_server:
        from density_db.embedded import EmbeddedServer

        psql = str(EmbeddedServer(app.settings.home).psql_path())
    else:
        psql = shutil.which("psql")
        if psql is None:
            raise DensityDBError(f"psql is not installed; connect with any client to {database.display_url}")
    os.execv(psql, [psql, database.libpq_url])


@db.command()
@click.argument("revision", default="head")
@pass_app
def upgrade(app: AppContext, revision: str) -> None:
    """Bring the schema to REVISION (default: the newest)."""
    from density_db.database import current_revision
    from density_db.database import upgrade as upgrade_schema

    database = app.open_database(ensure_schema=False)
    upgrade_schema(database, revision)
    click.echo(f"schema revision: {current_revision(database)}")


# Relative revisions ('-1') must not be read as options.
@db.command(context_settings={"ignore_unknown_options": True})
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def downgrade(app: AppContext, revision: str, yes: bool) -> None:
    """Take the schema back to REVISION ('-1' for one step, 'base' removes all tables and data)."""
    from density_db.database import current_revision
    from density_db.database import downgrade as downgrade_schema

    database = app.open_database(ensure_schema=False)
    if not yes:
        click.confirm(f"Downgrading {database.display_url} to {revision} can delete data. Continue?", abort=True)
    downgrade_schema(database, revision)
    click.echo(f"schema revision: {current_revision(database) or 'none'}")


@db.command()
@pass_app
def current(app: AppContext) -> None:
    """Print the database's schema revision and the one this density-db needs."""
    from density_db.database import current_revision, head_revision

    database = app.open_database(ensure_schema=False)
    click.echo(f"database: {current_revision(database) or 'none'}")
    click.echo(f"density-db: {head_revision(database)}")


@db.command("grant-readonly")
@click.argument("role")
@click.option(
    "--password",
    default=None,
    prompt="Password for the role",
    prompt_required=False,
    hide_input=True,
    confirmation_prompt=True,
    help="Set the role's password; --password alone asks for it without echoing.",
)
@pass_app
def grant_readonly(app: AppContext, role: str, password: str | None) -> None:
    """Create the login role ROLE if needed and let it read the catalog, nothing more.

    ROLE can SELECT every table and view (field_density ...) and run the SQL
    functions, now and after schema upgrades; it cannot write or create.
    Running the command again is harmless.
    """
    from density_db.roles import grant_read_only

    granted = grant_read_only(app.open_database(), role, password=password)
    state = "created" if granted.created else "already existed"
    click.echo(f"role {granted.role} {state}: it can read schema {granted.schema} of the catalog, not write to it")
    if granted.can_create:
        click.echo(
            f"warning: {granted.role} can still create tables in schema {granted.schema} through PUBLIC; "
            f"an administrator can run: REVOKE CREATE ON SCHEMA {granted.schema} FROM PUBLIC",
            err=True,
        )
    click.echo("connect with:")
    click.echo(f'  psql "{granted.url}"')
