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
    Database,
    alembic_config,
    check_schema,
    connect,
    current_revision,
    downgrade,
    head_revision,
    open_database,
    sqlalchemy_url,
    upgrade,
)
from density_db.errors import SchemaVersionError
from density_db.tables import Base

TABLES = {"exposure", "frame", "model", "run", "density_result", "failure", "campaign", "campaign_item"}
CAMPAIGN_ITEM_FUNCTIONS = {
    "campaign_item_forget_campaigns",
    "campaign_item_forget_frames",
    "campaign_item_forget_results",
}
FUNCTIONS = {"field_density_for_run", "polygon_area_deg2", "density_by_pixel", "flag_names", *CAMPAIGN_ITEM_FUNCTIONS}
VIEWS_PY_FUNCTIONS = (
    views.FIELD_DENSITY_FOR_RUN_FUNCTION,
    views.POLYGON_AREA_FUNCTION,
    views.DENSITY_BY_PIXEL_FUNCTION,
    views.FLAG_NAMES_FUNCTION,
    *views.CAMPAIGN_ITEM_CASCADE_FUNCTIONS,
)


@pytest.fixture
def empty_database(database_url: str) -> Database:
    opened = connect(sqlalchemy_url(database_url))
    yield opened
    opened.engine.dispose()


def table_names(database: Database) -> set[str]:
    with database.engine.connect() as connection:
        return set(sa.inspect(connection).get_table_names()) - {"alembic_version"}


def function_names(database: Database) -> set[str]:
    with database.engine.connect() as connection:
        return set(
            connection.execute(
                sa.text("SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace")
            ).scalars()
        )


def function_definitions(connection: sa.Connection, schema: str) -> dict[str, tuple]:
    """Each function of ``schema``: its arguments, result, language, volatility and body."""
    rows = connection.execute(
        sa.text("""
        SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
               l.lanname, p.provolatile, p.proisstrict, p.proparallel, p.prosrc
        FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
        WHERE p.pronamespace = CAST(:schema AS regnamespace)
    """),
        {"schema": schema},
    )
    # a result type named after a view is schema-qualified when another schema comes first in the search path
    return {row[0]: (row[1], row[2].replace(f"{schema}.", ""), *row[3:]) for row in rows}


def test_there_is_a_single_head(empty_database: Database) -> None:
    assert len(ScriptDirectory.from_config(alembic_config(empty_database)).get_heads()) == 1


def test_upgrade_from_empty_creates_every_table_and_the_view(empty_database: Database) -> None:
    upgrade(empty_database)
    assert table_names(empty_database) == TABLES
    with empty_database.engine.connect() as connection:
        assert sa.inspect(connection).get_view_names() == ["field_density"]
    assert function_names(empty_database) == FUNCTIONS
    assert current_revision(empty_database) == head_revision(empty_database)


def test_downgrade_to_base_then_upgrade_again(empty_database: Database) -> None:
    upgrade(empty_database)
    downgrade(empty_database, "base")
    assert table_names(empty_database) == set()
    assert function_names(empty_database) == set()
    upgrade(empty_database)
    assert table_names(empty_database) == TABLES
    assert function_names(empty_database) == FUNCTIONS


def test_downgrade_from_0005_forgets_the_training_domain_flag(empty_database: Database) -> None:
    upgrade(empty_database)
    query = sa.text("SELECT flag_names(257)")
    with empty_database.engine.connect() as connection:
        assert connection.execute(query).scalar() == ["crowded", "outside_training_domain"]
    downgrade(empty_database, "0004")
    with empty_database.engine.connect() as connection:
        assert connection.execute(query).scalar() == ["crowded"]


def test_downgrade_from_0004_drops_flag_names_and_0003_the_per_pixel_functions(empty_database: Database) -> None:
    upgrade(empty_database)
    downgrade(empty_database, "0003")
    assert function_names(empty_database) == FUNCTIONS - {"flag_names", *CAMPAIGN_ITEM_FUNCTIONS}
    downgrade(empty_database, "0002")
    assert function_names(empty_database) == {"field_density_for_run"}
    upgrade(empty_database)
    assert function_names(empty_database) == FUNCTIONS


def test_models_and_migrations_do_not_drift(empty_database: Database) -> None:
    upgrade(empty_database)
    with empty_database.engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    assert differences == []


def test_migrated_view_and_functions_are_the_ones_in_views_py(empty_database: Database) -> None:
    upgrade(empty_database)
    with empty_database.engine.begin() as connection:
        migrated = connection.execute(sa.text("SELECT pg_get_viewdef('field_density'::regclass)")).scalar()
        connection.execute(sa.text("CREATE SCHEMA fresh"))
        connection.execute(sa.text("SET LOCAL search_path = fresh, public"))
        connection.execute(sa.text(views.FIELD_DENSITY_VIEW))
        for function in VIEWS_PY_FUNCTIONS:
            connection.execute(sa.text(function))
        fresh = connection.execute(sa.text("SELECT pg_get_viewdef('fresh.field_density'::regclass)")).scalar()
        migrated_functions = function_definitions(connection, "public")
        fresh_functions = function_definitions(connection, "fresh")
        connection.execute(sa.text("DROP SCHEMA fresh CASCADE"))
    assert migrated == fresh
    assert set(fresh_functions) == FUNCTIONS
    assert migrated_functions == fresh_functions


def test_first_use_creates_the_schema_in_an_empty_database(database_url: str, tmp_path: Path) -> None:
    opened = open_database(Settings(database_url=database_url, home=tmp_path))
    assert table_names(opened) == TABLES
    opened.engine.dispose()


def test_first_use_that_sees_no_schema_while_another_process_creates_it_finds_it_finished(
    empty_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first look finds no revision; by the time anything else is looked at, another
    # process has created the schema (as when several commands start on a fresh server).
    looks = []

    def revision_after_a_concurrent_creation(database: Database) -> str | None:
        looks.append(database)
        if len(looks) == 1:
            upgrade(database)
            return None
        return current_revision(database)

    monkeypatch.setattr(database_module, "current_revision", revision_after_a_concurrent_creation)
    check_schema(empty_database, create_if_empty=True)
    assert current_revision(empty_database) == head_revision(empty_database)
    assert table_names(empty_database) == TABLES


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
    assert run_cli("db", "upgrade").output.strip() == "schema revision: 0005"
    current = run_cli("db", "current")
    assert current.output.splitlines() == ["database: 0005", "density-db: 0005"]
    refused = run_cli("db", "downgrade", "base", input="n\n")
    assert refused.exit_code == 1 and "can delete data" in refused.output
    assert run_cli("db", "downgrade", "-1", "--yes").output.strip() == "schema revision: 0004"
    assert run_cli("db", "downgrade", "base", "--yes").output.strip() == "schema revision: none"
    # any command that needs the schema brings the empty database back to the head
    assert run_cli("query", "sql", "SELECT count(*) AS n FROM exposure").output.splitlines() == ["n", "0"]


def test_models_sharing_a_name_at_0001_survive_0002_with_distinct_names(empty_database: Database) -> None:
    upgrade(empty_database, "0001")
    with empty_database.engine.begin() as connection:
        for sha in ("a" * 64, "b" * 64):
            connection.execute(
                sa.text(
                    "INSERT INTO model (name, stage, architecture, sha256) "
                    "VALUES ('demo', 'classifier', 'resnet18', :sha)"
                ),
                {"sha": sha},
            )
    upgrade(empty_database)
    with empty_database.engine.connect() as connection:
        names = connection.execute(sa.text("SELECT name FROM model ORDER BY id")).scalars().all()
    assert names[0] == "demo" and names[1].startswith("demo-") and len(set(names)) == 2
