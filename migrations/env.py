"""Alembic environment wired to density-db's metadata and connection settings.

density-db runs Alembic programmatically (``density-db db upgrade``) and hands
over its engine in ``config.attributes["engine"]``; run by hand, the database
is chosen exactly as density-db chooses it (``DENSITY_DB_URL`` or the embedded
server).
"""

from alembic import context

from density_db.tables import Base

target_metadata = Base.metadata


def _engine():
    engine = context.config.attributes.get("engine")
    if engine is None:
        from density_db.config import Settings
        from density_db.database import connect, resolve_url

        engine = connect(resolve_url(Settings.resolve())).engine
    return engine


def run_migrations_online() -> None:
    with _engine().connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("density-db migrations run online only (density-db db upgrade)")
run_migrations_online()
