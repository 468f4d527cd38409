"""The ``density-db`` command line: the root group and its command groups.

The root group turns ``-v``/``-q`` into logging once, resolves the settings
into a :class:`~density_db.cli.context.AppContext`, and turns density-db's
errors into messages and exit codes: 0 success, 1 a domain error (message, no
traceback unless ``-v``), 2 a usage error, 3 a run that stored what it could
but had inputs that failed, 130 interrupted.  Heavy modules (SQLAlchemy,
astropy, torch, dask) are imported inside commands so that ``--help`` is instant.
"""

from __future__ import annotations

import logging

import click

from density_db.cli.context import AppContext, configure_logging
from density_db.cli.db import db
from density_db.cli.evaluate import evaluate
from density_db.cli.flags import flags
from density_db.cli.ingest import ingest
from density_db.cli.maps import maps
from density_db.cli.models import models
from density_db.cli.plan import plan
from density_db.cli.query import query
from density_db.cli.simulate import simulate
from density_db.cli.train import train
from density_db.errors import DensityDBError

logger = logging.getLogger("density_db")

EXIT_INTERRUPTED = 130


class _DensityGroup(click.Group):
    """Root group that reports errors as one clear line (a traceback only with ``-v``)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except DensityDBError as error:
            self._explain(ctx, error)
            raise click.ClickException(str(error)) from None
        except Exception as error:
            if not type(error).__module__.startswith(("sqlalchemy", "psycopg")):
                raise
            self._explain(ctx, error)
            raise click.ClickException(f"database error: {str(error).splitlines()[0]}") from None

    @staticmethod
    def _explain(ctx: click.Context, error: BaseException) -> None:
        app = ctx.find_object(AppContext)
        if app is not None and app.verbosity > 0:
            logger.error("details", exc_info=error)


@click.group(cls=_DensityGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "database_url",
    metavar="URL",
    envvar="DENSITY_DB_URL",
    show_envvar=True,
    help="PostgreSQL URL of the catalog (default: the embedded server in DENSITY_DB_HOME).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug); tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.version_option(package_name="density-db", prog_name="density-db")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, verbose: int, quiet: bool) -> None:
    """density-db: stellar-density catalog of survey detector images, in PostgreSQL."""
    verbosity = -1 if quiet else verbose
    configure_logging(verbosity)
    ctx.obj = AppContext.from_options(database_url=database_url, verbosity=verbosity)


main.add_command(db)
main.add_command(evaluate)
main.add_command(flags)
main.add_command(ingest)
main.add_command(maps)
main.add_command(models)
main.add_command(plan)
main.add_command(query)
main.add_command(simulate)
main.add_command(train)
