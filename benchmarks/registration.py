"""Registration throughput: frames/s of ``density-db ingest --metadata-only`` on simulated detector files.

It simulates E CSST exposures (18 imaging detectors each, one FITS file per
detector with SCI and DQ HDUs and the real TAN WCS; written by
:func:`density_db.simulate.exposures.simulate_exposures`, small images since
registration reads headers only) in three variants: plain ``.fits``,
tile-compressed ``.fits.fz`` and gzip ``.fits.gz``.  For each
variant it times, on density-db's embedded PostgreSQL server:

* a header-only astropy read of the same files (every HDU's header, no
  pixels): the floor that registration cannot beat;
* :func:`density_db.registration.register_paths` over
  :func:`density_db.fits_input.discover_inputs` of the directory, with the
  ``csst`` profile, into a fresh database: what the command runs;
* the command itself, ``density-db --db URL -q ingest --metadata-only DIR``,
  in a new process (start-up and imports included), into another fresh database.

Each is repeated and the median kept; the ratio registration / header read
is measured in the same run, so it holds across machines better than the rates.

Run from the repository root (about 3 minutes with the defaults)::

    .venv/bin/python benchmarks/registration.py
    .venv/bin/python benchmarks/registration.py --exposures 200 --image-size 512
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from astropy.io import fits

from density_db.embedded import EmbeddedServer, ServerStatus
from density_db.fits_input import discover_inputs
from density_db.instrument import load_profile
from density_db.registration import register_paths
from density_db.simulate.exposures import plan_pointings, simulate_exposures
from support import (
    DEFAULT_HOME,
    RESULTS_DIR,
    database_software,
    describe_machine,
    fresh_database,
    median_seconds,
    write_json,
)

VARIANTS = {"plain": ".fits", "tile-compressed": ".fits.fz", "gzip": ".fits.gz"}
"""Variant name -> file suffix."""

FIELD_CENTRE = (150.0, 2.2)
"""Exposures are dithered by up to half a field around this position (ra, dec in deg)."""

DENSITY_DB = Path(sys.executable).with_name("density-db")


@dataclass(frozen=True)
class VariantFigures:
    """Median rates of one file variant; the ratio is registration over header read, same run."""

    variant: str
    files: int
    frames: int
    megabytes: float
    header_read_frames_per_s: float
    register_paths_frames_per_s: float
    command_frames_per_s: float
    register_over_header_read: float


def write_exposures(directory: Path, suffix: str, count: int, image_size: int, seed: int) -> list[Path]:
    """``count`` exposures with the same pointings, ids and pixels whatever the suffix."""
    pointings = plan_pointings(count, seed=seed, ra=FIELD_CENTRE[0], dec=FIELD_CENTRE[1])
    rows = simulate_exposures(
        directory, pointings, shape=(image_size, image_size), seed=seed, compress=suffix == ".fits.fz"
    )
    paths = [Path(row.path) for row in rows]
    if suffix == ".fits.gz":
        for path in paths:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes(), compresslevel=6))
            path.unlink()
        paths = [path.with_name(path.name + ".gz") for path in paths]
    return paths


def read_headers(paths: list[Path]) -> int:
    """Every HDU header of every file, as registration opens them; returns the number of HDUs."""
    hdus = 0
    for path in paths:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdu_list:
            hdus += len(list(hdu_list))
    return hdus


def register_into_fresh_database(server: EmbeddedServer, status: ServerStatus, directory: Path, frames: int) -> float:
    """Seconds of register_paths over ``directory`` into a new database (its creation not timed).

    Raises
    ------
    RuntimeError
        If not every frame was registered (a failure would make the rate meaningless).
    """
    database = fresh_database(server, status, "bench_registration")
    try:
        started = time.perf_counter()
        counts = register_paths(database, discover_inputs([directory]), load_profile("csst"))
        seconds = time.perf_counter() - started
    finally:
        database.engine.dispose()
    if counts.frames_new != frames or counts.failures:
        raise RuntimeError(f"registration of {directory} gave {counts}, expected {frames} new frames")
    return seconds


def command_into_fresh_database(server: EmbeddedServer, status: ServerStatus, directory: Path) -> float:
    """Seconds of ``density-db ingest --metadata-only`` over ``directory`` in a new process and database."""
    database = fresh_database(server, status, "bench_registration")
    database.engine.dispose()
    url = server.url(status, database="bench_registration")
    started = time.perf_counter()
    subprocess.run(
        [str(DENSITY_DB), "--db", url, "-q", "ingest", "--metadata-only", str(directory)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def measure_variant(
    server: EmbeddedServer, status: ServerStatus, variant: str, paths: list[Path], repeats: int
) -> VariantFigures:
    directory = paths[0].parent.parent  # the variant's folder: one sub-folder per exposure
    frames = len(paths)
    read_headers(paths)  # the files are in the page cache for every measurement, not only the later ones
    header_s = median_seconds(lambda: read_headers(paths), repeats)
    register_s = statistics.median(
        register_into_fresh_database(server, status, directory, frames) for _ in range(repeats)
    )
    command_s = statistics.median(command_into_fresh_database(server, status, directory) for _ in range(repeats))
    return VariantFigures(
        variant=variant,
        files=len(paths),
        frames=frames,
        megabytes=sum(path.stat().st_size for path in paths) / 1e6,
        header_read_frames_per_s=frames / header_s,
        register_paths_frames_per_s=frames / register_s,
        command_frames_per_s=frames / command_s,
        register_over_header_read=header_s / register_s,
    )


def print_table(figures: list[VariantFigures]) -> None:
    columns = ("files", "frames", "MB", "header read", "register_paths", "command", "register/read")
    print(f"{'variant':<16}" + "".join(f"{column:>16}" for column in columns))
    print(f"{'':<16}{'':>16}{'':>16}{'':>16}" + "".join(f"{'frames/s':>16}" for _ in range(3)))
    for row in figures:
        print(
            f"{row.variant:<16}{row.files:>16}{row.frames:>16}{row.megabytes:>16.1f}"
            f"{row.header_read_frames_per_s:>16,.0f}{row.register_paths_frames_per_s:>16,.0f}"
            f"{row.command_frames_per_s:>16,.0f}{row.register_over_header_read:>16.2f}"
        )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--exposures", type=int, default=50, help="exposures per variant, 18 detector files each (default 50)"
    )
    parser.add_argument("--image-size", type=int, default=256, help="pixels on a side of each image (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement, median kept (default 3)")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help=f"DENSITY_DB_HOME (default {DEFAULT_HOME})")
    parser.add_argument(
        "--json", type=Path, default=RESULTS_DIR / "registration.json", help="where to write the figures"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the pointings and pixels")
    arguments = parser.parse_args()
    if min(arguments.exposures, arguments.image_size, arguments.repeats) < 1:
        parser.error("--exposures, --image-size and --repeats must be positive")
    return arguments


def main(arguments: argparse.Namespace) -> None:
    server = EmbeddedServer(arguments.home)
    was_running = server.status() is not None
    status = server.ensure_running()
    figures = []
    with tempfile.TemporaryDirectory(prefix="density-db-registration-") as scratch:
        for variant, suffix in VARIANTS.items():
            print(f"writing {arguments.exposures} {variant} exposures of {arguments.image_size}^2 pixels", flush=True)
            paths = write_exposures(
                Path(scratch) / variant, suffix, arguments.exposures, arguments.image_size, arguments.seed
            )
            figures.append(measure_variant(server, status, variant, paths, arguments.repeats))
    machine = describe_machine(database_software(server.url(status, database="postgres")))
    if not was_running:
        server.stop()
    print(f"\nmachine: {machine.describe()}")
    print(f"median of {arguments.repeats} runs; files in the page cache; a fresh database per registration\n")
    print_table(figures)
    write_json(
        arguments.json,
        machine,
        {
            "exposures": arguments.exposures,
            "image_size": arguments.image_size,
            "repeats": arguments.repeats,
            "variants": [asdict(row) for row in figures],
        },
    )
    print(f"\nfigures written to {arguments.json}")


if __name__ == "__main__":
    main(parse_arguments())
