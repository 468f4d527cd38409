"""Schema revisions: one head, upgrade from empty, downgrade and back, no drift from the models."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from density_db import database as database_module
from density_db import views
from density_db.config import Settings
from density_db.database import (
    Database, alembic_config, check_schema, connect, current_revision, downgrade, head_revision,
    open_database, sqlalchemy_url, upgrade,
)
from density_db.errors import SchemaVersionError
from density_db.models import Base

TABLES = {"exposure", "frame", "model", "run", "density_result", "failure", "campaign", "campaign_item"}


@pytest.fixture
def empty_database(database_url: str) -> Database:
    opened = connect(sqlalchemy_url(database_url))
    yield opened
    opened.engine.dispose()


def table_names(database: Database) -> set[str]:
    with database.engine.connect() as connection:
        return set(sa.inspect(connection).get_table_names()) - {"alembic_version"}


def test_there_is_a_single_head(empty_database: Database) -> None:
    assert len(ScriptDirectory.from_config(alembic_config(empty_database)).get_heads()) == 1


def test_upgrade_from_empty_creates_every_table_and_the_view(empty_database: Database) -> None:
    upgrade(empty_database)
    assert table_names(empty_database) == TABLES
    with empty_database.engine.connect() as connection:
        assert sa.inspect(connection).get_view_names() == ["field_density"]
        functions = connection.execute(sa.text("SELECT proname FROM pg_proc WHERE proname = 'field_density_for_run'"))
        assert functions.scalar() == "field_density_for_run"
    assert current_revision(empty_database) == head_revision(empty_database)


def test_downgrade_to_base_then_upgrade_again(empty_database: Database) -> None:
    upgrade(empty_database)
    downgrade(empty_database, "base")
    assert table_names(empty_database) == set()
    upgrade(empty_database)
    assert table_names(empty_database) == TABLES


def test_models_and_migrations_do_not_drift(empty_database: Database) -> None:
    upgrade(empty_database)
    with empty_database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert differences == []


def test_migrated_view_is_the_one_in_views_py(empty_database: Database) -> None:
    upgrade(empty_database)
    with empty_database.engine.begin() as connection:
        migrated = connection.execute(sa.text("SELECT pg_get_viewdef('field_density'::regclass)")).scalar()
        connection.execute(sa.text("CREATE SCHEMA fresh"))
        connection.execute(sa.text("SET LOCAL search_path = fresh, public"))
        connection.execute(sa.text(views.FIELD_DENSITY_VIEW))
        connection.execute(sa.text(views.FIELD_DENSITY_FOR_RUN_FUNCTION))
        fresh = connection.execute(sa.text("SELECT pg_get_viewdef('fresh.field_density'::regclass)")).scalar()
        migrated_function, fresh_function = connection.execute(sa.text(
            "SELECT prosrc FROM pg_proc WHERE proname = 'field_density_for_run' ORDER BY pronamespace::regnamespace::text"
        )).scalars()
        connection.execute(sa.text("DROP SCHEMA fresh CASCADE"))
    assert migrated == fresh
    assert migrated_function == fresh_function


def test_first_use_creates_the_schema_in_an_empty_database(database_url: str, tmp_path: Path) -> None:
    opened = open_database(Settings(database_url=database_url, home=tmp_path))
    assert table_names(opened) == TABLES
    opened.engine.dispose()


def test_older_revision_asks_for_db_upgrade(empty_database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    upgrade(empty_database)
    monkeypatch.setattr(database_module, "head_revision", lambda database: "9999")
    with pytest.raises(SchemaVersionError, match="run `density-db db upgrade`"):
        check_schema(empty_database, create_if_empty=True)


def test_unknown_revision_says_density_db_is_too_old(empty_database: Database) -> None:
    upgrade(empty_database)
    with empty_database.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff'"))
    with pytest.raises(SchemaVersionError, match="newer density-db"):
        check_schema(empty_database, create_if_empty=True)


def test_cli_upgrade_downgrade_current(run_cli) -> None:
    assert run_cli("db", "upgrade").output.strip() == "schema revision: 0002"
    current = run_cli("db", "current")
    assert current.output.splitlines() == ["database: 0002", "density-db: 0002"]
    refused = run_cli("db", "downgrade", "base", input="n\n")
    assert refused.exit_code == 1 and "can delete data" in refused.output
    assert run_cli("db", "downgrade", "-1", "--yes").output.strip() == "schema revision: 0001"
    assert run_cli("db", "downgrade", "base", "--yes").output.strip() == "schema revision: none"
    # any command that needs the schema brings the empty database back to the head
    assert run_cli("query", "sql", "SELECT count(*) AS n FROM exposure").output.splitlines() == ["n", "0"]


def test_models_sharing_a_name_at_0001_survive_0002_with_distinct_names(empty_database: Database) -> None:
    upgrade(empty_database, "0001")
    with empty_database.engine.begin() as connection:
        for sha in ("a" * 64, "b" * 64):
            connection.execute(sa.text(
                "INSERT INTO model (name, stage, architecture, sha256) VALUES ('demo', 'classifier', 'resnet18', :sha)"
            ), {"sha": sha})
    upgrade(empty_database)
    with empty_database.engine.connect() as connection:
        names = connection.execute(sa.text("SELECT name FROM model ORDER BY id")).scalars().all()
    assert names[0] == "demo" and names[1].startswith("demo-") and len(set(names)) == 2
