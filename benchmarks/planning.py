"""Flags and campaigns over millions of frames: seconds of ``flags recompute`` and of ``plan create/show/diff``.

What it measures, on density-db's embedded PostgreSQL server, with the
synthetic catalog of ``maps.py`` (N frames of N/18 CSST exposures, each with
one density result; the database ``bench_maps_N`` is reused when it is
complete): recomputing every result's flags with the shipped rules, creating
a campaign with the shipped routing (twice, to time a diff between them),
the per-branch-and-band summary of ``plan show``, the diff, and deleting a
campaign.  The goal: a campaign over 2 million frames created in seconds.

Run from the repository root::

    .venv/bin/python benchmarks/planning.py                    # 2 million frames
    .venv/bin/python benchmarks/planning.py --frames 100000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from map_building import REFERENCE_FRAMES, add_results, is_ready
from spatial_queries import load_frames

from density_db.embedded import EmbeddedServer
from density_db.flag_rules import FlagRules
from density_db.planning.campaigns import (
    PlanSelection,
    create_campaign,
    delete_campaign,
    diff_campaigns,
    show_campaign,
)
from density_db.planning.flag_runs import recompute_flags
from density_db.planning.rules import default_rules
from support import (
    DEFAULT_HOME,
    RESULTS_DIR,
    database_exists,
    database_software,
    describe_machine,
    fresh_database,
    open_benchmark_database,
    write_json,
)

GOAL_CREATE_SECONDS = 10.0


def timed(action):
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def main(arguments: argparse.Namespace) -> None:
    server = EmbeddedServer(arguments.home)
    was_running = server.status() is not None
    status = server.ensure_running()
    name = f"bench_maps_{arguments.frames}"
    libpq_url = server.url(status, database=name)
    if database_exists(server, status, name) and is_ready(libpq_url, arguments.frames):
        print(f"reusing database {name} ({arguments.frames:,} frames with results)")
    else:
        fresh_database(server, status, name).engine.dispose()
        print(f"loading {arguments.frames:,} frames into database {name} of the server in {arguments.home}")
        load_frames(libpq_url, arguments.seed, arguments.frames)
        add_results(libpq_url, arguments.seed)
    database = open_benchmark_database(server, status, name)
    from density_db.database import upgrade

    upgrade(database)
    machine = describe_machine(database_software(libpq_url))
    rules = default_rules()
    for leftover in ("bench-a", "bench-b"):
        try:
            delete_campaign(database, leftover)
        except Exception:  # noqa: BLE001 - absent from a fresh database
            pass
    recomputed, recompute_s = timed(lambda: recompute_flags(database, FlagRules.from_rules(rules)))
    first, create_s = timed(lambda: create_campaign(database, "bench-a", rules, PlanSelection()))
    _, second_create_s = timed(lambda: create_campaign(database, "bench-b", rules, PlanSelection()))
    _, show_s = timed(lambda: show_campaign(database, "bench-a"))
    difference, diff_s = timed(lambda: diff_campaigns(database, "bench-a", "bench-b"))
    _, delete_s = timed(lambda: (delete_campaign(database, "bench-a"), delete_campaign(database, "bench-b")))
    database.engine.dispose()
    if not was_running:
        server.stop()
    frames = first.frames
    print(f"\nmachine: {machine.describe()}")
    print(f"{frames:,} frames with results, shipped rules:")
    print(f"  flags recompute: {recompute_s:.1f} s ({recomputed.results / recompute_s:,.0f} results/s)")
    print(
        f"  plan create: {create_s:.1f} s and {second_create_s:.1f} s ({frames / create_s:,.0f} frames/s; "
        f"goal <= {GOAL_CREATE_SECONDS:g} s at 2 million)"
    )
    print(f"  plan show (frames, area, cost per branch and band): {show_s:.1f} s")
    print(f"  plan diff of two campaigns: {diff_s:.1f} s ({difference.unchanged:,} frames kept their branch)")
    print(f"  deleting both campaigns: {delete_s:.1f} s")
    write_json(
        arguments.json,
        machine,
        {
            "frames": frames,
            "branches": first.frames_by_branch,
            "flags_recompute_s": recompute_s,
            "create_s": [create_s, second_create_s],
            "show_s": show_s,
            "diff_s": diff_s,
            "delete_both_s": delete_s,
        },
    )
    print(f"\nfigures written to {arguments.json}")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=REFERENCE_FRAMES, help="frames (default 2,000,000)")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help=f"DENSITY_DB_HOME (default {DEFAULT_HOME})")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "planning.json", help="where to write the figures")
    parser.add_argument("--seed", type=int, default=20270101, help="seed of the synthetic sky and results")
    arguments = parser.parse_args()
    if arguments.frames < 1:
        parser.error("--frames must be positive")
    return arguments


if __name__ == "__main__":
    main(parse_arguments())
