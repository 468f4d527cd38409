"""Progress bars of long commands: rich on stderr, none with ``-q``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from density_db.cli.context import AppContext

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn


@contextlib.contextmanager
def progress_bar(app: AppContext, *columns: ProgressColumn) -> Iterator[Progress | None]:
    """A started rich ``Progress`` (default columns when none are given), or ``None`` when quiet."""
    if not app.show_progress:
        yield None
        return
    from rich.progress import Progress

    with Progress(*columns, transient=True) as bar:
        yield bar
