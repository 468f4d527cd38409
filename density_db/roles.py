"""Database roles for people who read the catalog: read-only access for analysts.

:func:`grant_read_only` makes a login role that can read every table, view
and function of the catalog's schema, and nothing else: it can connect and
``SELECT``, never insert, update, delete or create.  Default privileges make
tables and functions that later schema revisions create readable too.
Running it again is harmless (it only grants what is missing and sets the
password when one is given).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from psycopg import errors as pg_errors
from psycopg import sql

from density_db.database import Database
from density_db.errors import DatabaseError, DensityDBError

logger = logging.getLogger(__name__)

_MAX_ROLE_NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: longer names are silently truncated


@dataclass(frozen=True)
class ReadOnlyRole:
    """What :func:`grant_read_only` did, and how the role connects.

    Attributes
    ----------
    role
        The role's name.
    created
        True when the role did not exist before.
    url
        A libpq URL (``postgresql://ROLE@...``) for psql and other clients;
        it never holds a password.
    schema
        The schema whose tables and functions the role can read.
    can_create
        True when the role can still create objects in the schema through
        ``PUBLIC`` (PostgreSQL before 15 grants that by default); an
        administrator should run ``REVOKE CREATE ON SCHEMA public FROM PUBLIC``.
    """

    role: str
    created: bool
    url: str
    schema: str
    can_create: bool


def grant_read_only(database: Database, role: str, *, password: str | None = None) -> ReadOnlyRole:
    """Create ``role`` (a login role) if missing and let it read the catalog.

    Grants CONNECT on the database, USAGE on the current schema, SELECT on
    all its tables and views and EXECUTE on its functions, and alters the
    default privileges of the connected user so that tables and functions it
    creates later (schema upgrades) are readable as well.

    Parameters
    ----------
    database : Database
        The catalog, connected as a user that owns its objects and may create
        roles (the embedded server's superuser, or the migrating user).
    role : str
        Name of the role, used as given (case-sensitive, no quoting needed).
    password : str, optional
        Password to set (sent to the server already hashed); ``None`` leaves
        an existing role's password alone and creates a new role without one.

    Returns
    -------
    ReadOnlyRole

    Raises
    ------
    DensityDBError
        If the name is empty, too long or reserved, or names a superuser or the
        connected user (neither can be made read-only).
    DatabaseError
        If the connected user lacks the privilege to create the role or grant.
    """
    _check_role_name(role)
    with database.engine.begin() as connection:
        existing = connection.execute(
            sa.text("SELECT rolsuper, rolcanlogin FROM pg_roles WHERE rolname = :role"), {"role": role}
        ).one_or_none()
        current_user, database_name, schema = connection.execute(
            sa.text("SELECT current_user, current_database(), current_schema()")
        ).one()
        if role == current_user:
            raise DensityDBError(f"{role!r} is the user density-db connects as; choose another name for analysts")
        if existing is not None and existing.rolsuper:
            raise DensityDBError(f"role {role!r} is a superuser: it cannot be made read-only")
        raw = connection.connection.driver_connection
        name = sql.Identifier(role)
        secret = (
            sql.SQL(" PASSWORD {}").format(
                sql.Literal(raw.pgconn.encrypt_password(password.encode(), role.encode(), None).decode())
            )
            if password is not None
            else sql.SQL("")
        )
        statements = []
        if existing is None:
            statements.append(sql.SQL("CREATE ROLE {} LOGIN{}").format(name, secret))
        elif password is not None or not existing.rolcanlogin:
            statements.append(sql.SQL("ALTER ROLE {} LOGIN{}").format(name, secret))
        schema_name = sql.Identifier(schema)
        statements += [
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database_name), name),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema_name, name),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema_name, name),
            sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {} TO {}").format(schema_name, name),
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(schema_name, name),
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT EXECUTE ON FUNCTIONS TO {}").format(schema_name, name),
        ]
        for statement in statements:
            try:
                raw.execute(statement)
            except pg_errors.InsufficientPrivilege as error:
                raise DatabaseError(
                    f"{current_user!r} may not do this on {database.display_url}: {str(error).strip()} "
                    "(connect as the catalog's owner, with the CREATEROLE privilege)"
                ) from None
        can_create = connection.execute(
            sa.text("SELECT has_schema_privilege(:role, :schema, 'CREATE')"), {"role": role, "schema": schema}
        ).scalar()
    if can_create:
        logger.warning("role %s can create objects in schema %s through PUBLIC", role, schema)
    url = database.url.set(drivername="postgresql", username=role, password=None)
    return ReadOnlyRole(
        role=role,
        created=existing is None,
        url=url.render_as_string(hide_password=False),
        schema=schema,
        can_create=bool(can_create),
    )


def _check_role_name(role: str) -> None:
    if not role or not role.strip():
        raise DensityDBError("the role name is empty")
    if len(role.encode()) > _MAX_ROLE_NAME_BYTES:
        raise DensityDBError(f"role names are at most {_MAX_ROLE_NAME_BYTES} bytes long, got {role!r}")
    if role.startswith("pg_") or role.lower() in {"public", "none", "current_user", "session_user", "current_role"}:
        raise DensityDBError(f"{role!r} is reserved by PostgreSQL; choose another role name")
