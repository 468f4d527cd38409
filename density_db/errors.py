"""The one exception hierarchy of density-db.

Library code raises these; only the command-line interface turns them into
messages and exit codes (1 for every :class:`DensityDBError`).
"""


class DensityDBError(Exception):
    """Base class of every error a user can act on."""


class ConfigurationError(DensityDBError):
    """A setting, profile or rules file is missing or invalid."""


class RulesError(ConfigurationError):
    """A rules file that cannot be used, with where and why."""


class DatabaseError(DensityDBError):
    """The database cannot be reached or refused an operation."""


class SchemaVersionError(DatabaseError):
    """The database schema is not at the revision this density-db expects."""


class EmbeddedServerError(DatabaseError):
    """The embedded PostgreSQL server could not be initialised, started or stopped."""


class TrainingDivergedError(DensityDBError):
    """Training never reached a finite validation loss (e.g. the learning rate is too high)."""


class InputError(DensityDBError):
    """An input file cannot be used; ``kind`` is the short error kind stored in ``failure``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):
        # Raised in worker processes: must survive pickling back to the parent.
        return type(self), (self.kind, str(self))
