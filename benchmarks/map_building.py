"""HEALPix maps from millions of frames: rows/s, seconds and peak memory of ``density-db maps build``.

What it measures, on density-db's embedded PostgreSQL server: N synthetic
frames (the sky of ``spatial_queries.py``: N/18 CSST exposures uniform within
|dec| <= 70 deg, loaded with COPY by the same code) each get a density result
(classes 0-5 in proportions like a wide survey's, bright-star counts, 5 %
flagged), made in the server by one ``INSERT ... SELECT``.  Then the maps of
every band and of all bands together are built at nside 1024 by
:func:`density_db.maps.build.build_maps` in a child process, so that its peak
resident memory (Linux's VmHWM) is the map building's alone.

Figures: frames mapped per second while streaming from PostgreSQL,
sampling the footprints (at nside 4096 for maps at nside 1024) and
accumulating (the part that grows with the number of frames), the seconds spent on statistics and merging
the bands (growing with the pixels covered), the seconds spent writing the
files, and the child's peak RSS, against the goals (2 million frames
aggregated in <= 60 s, peak RSS <= 4 GB).  By default only healsparse
files are written: healpy FITS maps are full-sky (50 MB per map at nside 1024,
300 MB per class histogram), add them with ``--formats hsp,fits``.

Run from the repository root::

    .venv/bin/python benchmarks/map_building.py                      # 2 million frames
    .venv/bin/python benchmarks/map_building.py --frames 50000
    .venv/bin/python benchmarks/map_building.py --frames 50000 --keep   # reuse the loaded database
    .venv/bin/python benchmarks/map_building.py --keep --nside 4096 --region 30,0,20   # the frames of a cone

A fully covered sky at nside 4096 needs 20 GB of sums per accumulator, so
fine maps of millions of frames are measured on a region.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import psycopg
from spatial_queries import load_frames

from density_db.embedded import EmbeddedServer
from support import (
    DEFAULT_HOME,
    RESULTS_DIR,
    database_exists,
    database_software,
    describe_machine,
    fresh_database,
    peak_rss_mib,
    write_json,
)

GOAL_SECONDS_AT_2_MILLION = 60.0
GOAL_PEAK_RSS_GIB = 4.0
REFERENCE_FRAMES = 2_000_000

RESULTS_SQL = """
INSERT INTO density_result (
    frame_id, classifier_id, regressor_id, run_id, density_class, probabilities, class_confidence,
    log_bright, bright_count, regression_status, flags
)
SELECT id, %(classifier)s, %(regressor)s, %(run)s, density_class,
       CAST(ARRAY(SELECT CASE WHEN k = density_class THEN 0.9 ELSE 0.02 END FROM generate_series(0, 5) AS k)
            AS real[]), 0.9,
       CASE WHEN density_class = 5 THEN NULL ELSE log10(1 + bright) END,
       CASE WHEN density_class = 5 THEN NULL ELSE bright END,
       CASE density_class WHEN 5 THEN 'bypassed' WHEN 0 THEN 'empty' ELSE 'predicted' END,
       CASE WHEN draw %% 100 < 5 THEN 1 ELSE 0 END
FROM (
    SELECT id, draw,
           CASE WHEN draw %% 1000 < 20 THEN 0 WHEN draw %% 1000 < 350 THEN 1 WHEN draw %% 1000 < 750 THEN 2
                WHEN draw %% 1000 < 930 THEN 3 WHEN draw %% 1000 < 990 THEN 4 ELSE 5 END AS density_class,
           CASE WHEN draw %% 1000 < 20 THEN 0.0 ELSE (draw / 1000 %% 2000)::double precision END AS bright
    FROM (SELECT id, abs(CAST(hashint8(id + %(seed)s) AS bigint)) AS draw FROM frame) AS drawn
) AS classified
"""
"""One result per frame, drawn from a hash of the frame id (deterministic for a seed)."""


def add_results(libpq_url: str, seed: int) -> float:
    """Give every frame a result of one run and one model pair; return the seconds it took."""
    started = time.perf_counter()
    with psycopg.connect(libpq_url, autocommit=True) as connection:
        models = {}
        for name, stage, architecture in (
            ("bench-classifier", "classifier", "resnet34"),
            ("bench-regressor", "regressor", "resnet50"),
        ):
            models[stage] = connection.execute(
                "INSERT INTO model (name, stage, architecture, sha256) VALUES (%s, %s, %s, %s) RETURNING id",
                (name, stage, architecture, name.ljust(64, "0")),
            ).fetchone()[0]
        run = connection.execute(
            "INSERT INTO run (kind, status, code_version, host, pid) VALUES ('ingest', 'completed', 'benchmark', "
            "'benchmark', 0) RETURNING id"
        ).fetchone()[0]
        connection.execute(
            RESULTS_SQL,
            {
                "classifier": models["classifier"],
                "regressor": models["regressor"],
                "run": run,
                "seed": seed,
            },
        )
        connection.execute("VACUUM ANALYZE density_result")
    return time.perf_counter() - started


def is_ready(libpq_url: str, frame_count: int) -> bool:
    """Whether the database holds ``frame_count`` frames, each with a result."""
    with psycopg.connect(libpq_url) as connection:
        frames = connection.execute("SELECT count(*) FROM frame").fetchone()[0]
        results = connection.execute("SELECT count(*) FROM density_result").fetchone()[0]
    return frames == results == frame_count


def build_in_child(sqlalchemy_url: str, nside: int, formats: str, compress: bool, region: str, out_dir: Path) -> dict:
    """Run the map building in a child process; return its figures and peak RSS."""
    command = [
        sys.executable,
        __file__,
        "--child",
        sqlalchemy_url,
        str(nside),
        formats,
        str(int(compress)),
        region,
        str(out_dir),
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    status = child.wait()
    wall_s = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"map building failed (exit status {status})")
    figures = json.loads(output.strip().splitlines()[-1])
    return {**figures, "child_wall_s": wall_s}


def child_main(sqlalchemy_url: str, nside: int, formats: str, compress: bool, region: str, out_dir: Path) -> None:
    """The child: build every band's maps and the all-bands maps, print figures as one JSON line."""
    from density_db.database import connect
    from density_db.database import sqlalchemy_url as to_url
    from density_db.maps.build import MapSettings, build_maps
    from density_db.maps.source import Selection
    from density_db.regions import parse_region

    database = connect(to_url(sqlalchemy_url))
    started = time.perf_counter()
    selection = Selection(region=parse_region(region) if region else None)
    summary = build_maps(
        database,
        MapSettings(
            nside=nside, out_dir=out_dir, formats=tuple(formats.split(",")), compress=compress, selection=selection
        ),
    )
    total_s = time.perf_counter() - started
    print(
        json.dumps(
            {
                "frames_placed": summary.frames_placed,
                "sampling_orders": summary.bands[-1].sampling_orders,
                "union_order": summary.sampling.mask_order,
                "bands": [asdict(band) for band in summary.bands],
                "files": len(summary.files),
                "output_gib": sum(path.stat().st_size for path in summary.files) / 2**30,
                "stream_s": summary.stream_seconds,
                "finalize_s": summary.finalize_seconds,
                "write_s": summary.write_seconds,
                "total_s": total_s,
                "peak_rss_gib": peak_rss_mib() / 1024,
            }
        )
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=REFERENCE_FRAMES, help="frames to load (default 2,000,000)")
    parser.add_argument("--nside", type=int, default=1024, help="nside of the maps (default 1024)")
    parser.add_argument("--formats", default="hsp", help="map formats to write: hsp, fits or hsp,fits (default hsp)")
    parser.add_argument("--compress", action="store_true", help="compress the healsparse maps (maps build --compress)")
    parser.add_argument(
        "--region",
        default="",
        help="map only the frames overlapping this region (maps build --region, e.g. a cone RA,DEC,RADIUS)",
    )
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help=f"DENSITY_DB_HOME (default {DEFAULT_HOME})")
    parser.add_argument("--keep", action="store_true", help="reuse database bench_maps_N if it holds N frames")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "maps.json", help="where to write the figures")
    parser.add_argument("--seed", type=int, default=20270101, help="seed of the synthetic sky and results")
    arguments = parser.parse_args()
    if arguments.frames < 1:
        parser.error("--frames must be positive")
    return arguments


def main(arguments: argparse.Namespace) -> None:
    server = EmbeddedServer(arguments.home)
    was_running = server.status() is not None
    status = server.ensure_running()
    name = f"bench_maps_{arguments.frames}"
    libpq_url = server.url(status, database=name)
    load = None
    results_s = None
    if arguments.keep and database_exists(server, status, name) and is_ready(libpq_url, arguments.frames):
        print(f"reusing database {name} ({arguments.frames:,} frames with results)")
    else:
        fresh_database(server, status, name).engine.dispose()
        print(f"loading {arguments.frames:,} frames into database {name} of the server in {arguments.home}")
        load = load_frames(libpq_url, arguments.seed, arguments.frames)
        results_s = add_results(libpq_url, arguments.seed)
        print(f"  results added in {results_s:.1f} s")
    machine = describe_machine(database_software(libpq_url))
    with tempfile.TemporaryDirectory(prefix="density-db-maps-") as out_dir:
        figures = build_in_child(
            server.url(status, database=name, driver="psycopg"),
            arguments.nside,
            arguments.formats,
            arguments.compress,
            arguments.region,
            Path(out_dir),
        )
    if not was_running:
        server.stop()
    frames = figures["frames_placed"]
    rows_per_s = frames / figures["stream_s"]
    projected_s = REFERENCE_FRAMES / rows_per_s
    print(f"\nmachine: {machine.describe()}")
    print(
        f"maps at nside {arguments.nside} of {frames:,} frames ({len(figures['bands']) - 1} bands and all together), "
        f"formats {arguments.formats}:"
    )
    orders = ", ".join(f"{count:,} at order {order}" for order, count in figures["sampling_orders"].items())
    print(
        f"  streaming from PostgreSQL, sampling footprints ({orders}; union at order {figures['union_order']}) "
        f"and accumulating: {figures['stream_s']:.1f} s = {rows_per_s:,.0f} frames/s"
    )
    print(
        f"  statistics and merging the bands: {figures['finalize_s']:.1f} s; writing {figures['files']} files: "
        f"{figures['write_s']:.1f} s; build_maps in all: {figures['total_s']:.1f} s "
        f"(child process {figures['child_wall_s']:.1f} s)"
    )
    print(
        f"  peak RSS of the map building: {figures['peak_rss_gib']:.2f} GiB (goal <= {GOAL_PEAK_RSS_GIB:g} GB); "
        f"files written: {figures['output_gib']:.2f} GiB"
    )
    if frames != REFERENCE_FRAMES:
        print(
            f"  at this rate {REFERENCE_FRAMES:,} frames would stream, rasterise and accumulate in "
            f"{projected_s:.0f} s (goal <= {GOAL_SECONDS_AT_2_MILLION:g} s for the aggregation); statistics, merging "
            "and memory grow with the pixels covered, not with the frames"
        )
    write_json(
        arguments.json,
        machine,
        {
            "frames": arguments.frames,
            "nside": arguments.nside,
            "formats": arguments.formats,
            "compress": arguments.compress,
            "region": arguments.region or None,
            "seed": arguments.seed,
            "load": None if load is None else asdict(load),
            "results_insert_s": results_s,
            "maps": figures,
            "stream_frames_per_s": rows_per_s,
            "projected_stream_s_at_2_million": projected_s,
        },
    )
    print(f"\nfigures written to {arguments.json}")


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--child":
        child_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1", sys.argv[6], Path(sys.argv[7]))
    else:
        main(parse_arguments())
