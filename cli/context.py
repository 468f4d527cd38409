"""The typed object every command receives in ``ctx.obj``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from density_db.config import Settings

if TYPE_CHECKING:
    from density_db.database import Database


@dataclass(frozen=True)
class AppContext:
    """Settings resolved from the root options, and how talkative to be."""

    settings: Settings
    verbosity: int  # -1 quiet, 0 normal, 1 info, 2 debug

    @classmethod
    def from_options(cls, *, database_url: str | None, verbosity: int) -> AppContext:
        return cls(settings=Settings.resolve(database_url=database_url), verbosity=verbosity)

    @property
    def show_progress(self) -> bool:
        return self.verbosity >= 0

    def open_database(self, *, ensure_schema: bool = True) -> Database:
        """Connect (starting the embedded server if needed) and check the schema."""
        from density_db.database import open_database

        return open_database(self.settings, ensure_schema=ensure_schema)

    def canonical_band(self, band: str | None) -> str | None:
        """The instrument profile's spelling of ``band`` (``nuv`` -> ``NUV``); other bands (and ``None``) as given."""
        from density_db.errors import InputError
        from density_db.instrument import load_profile

        if band is None:
            return None
        try:
            return load_profile(self.settings.profile).canonical_band(band)
        except InputError:
            return band

    def canonical_bands(self, bands: tuple[str, ...]) -> tuple[str, ...]:
        """:meth:`canonical_band` of each band, without repeats."""
        return tuple(dict.fromkeys(self.canonical_band(band) for band in bands))


def configure_logging(verbosity: int) -> None:
    """Send density-db's log records to stderr at the level the user chose."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("density_db")
    root.handlers[:] = [handler]
    root.setLevel(level)


pass_app = click.make_pass_decorator(AppContext)
"""Decorator handing a command the root group's :class:`AppContext`."""
