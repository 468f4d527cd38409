"""One typed settings object, resolved once from options and the environment.

Precedence for the database: ``--db URL``, else ``DENSITY_DB_URL``, else the
embedded PostgreSQL server kept in ``DENSITY_DB_HOME`` (default: the user data
directory, e.g. ``~/.local/share/density-db``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

DATABASE_URL_VARIABLE = "DENSITY_DB_URL"
HOME_VARIABLE = "DENSITY_DB_HOME"
PROFILE_VARIABLE = "DENSITY_DB_PROFILE"
DEFAULT_PROFILE = "csst"


@dataclass(frozen=True)
class Settings:
    """Where the catalog lives and how input files are read.

    Attributes
    ----------
    database_url
        URL of a PostgreSQL server chosen by the user, or ``None`` for the
        embedded server.
    home
        Directory of the embedded server's data, socket and logs.
    profile
        Instrument profile: a shipped name (``csst``) or a path to a TOML file.
    """

    database_url: str | None
    home: Path
    profile: str = DEFAULT_PROFILE

    @property
    def uses_embedded_server(self) -> bool:
        """True when no URL was given and density-db runs its own server."""
        return self.database_url is None

    @classmethod
    def resolve(
        cls,
        *,
        database_url: str | None = None,
        profile: str | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> Settings:
        """Build the settings from explicit values, then the environment, then defaults."""
        url = database_url or environ.get(DATABASE_URL_VARIABLE) or None
        home = environ.get(HOME_VARIABLE) or platformdirs.user_data_dir("density-db", appauthor=False)
        return cls(
            database_url=url,
            home=Path(home).expanduser().absolute(),
            profile=profile or environ.get(PROFILE_VARIABLE) or DEFAULT_PROFILE,
        )
