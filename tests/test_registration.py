"""``density-db ingest --metadata-only``: every input ends as a frame or a failure, re-runs add nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import sqlalchemy as sa

from density_db.database import Database
from density_db.simulate.exposures import plan_pointings, simulate_exposures
from fits_factory import FrameSpec, csst_keywords, truncate, write_mef, write_single

SMALL = (64, 64)  # registration reads headers: tiny images, real focal-plane WCS


def simulate(out: Path, exposures: int, *, seed: int, ra: float = 10.0, dec: float = -30.0, **options) -> list[Path]:
    """Simulated exposures, one file per imaging detector (18 each)."""
    rows = simulate_exposures(
        out, plan_pointings(exposures, seed=seed, ra=ra, dec=dec), shape=SMALL, seed=seed, **options
    )
    return [Path(row.path) for row in rows]


def rows(database: Database, statement: str) -> list[tuple]:
    with database.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(statement))]


def test_exposure_files_register_every_detector_once(run_cli, database: Database, tmp_path: Path) -> None:
    simulate(tmp_path / "plain", 1, seed=1)
    simulate(tmp_path / "compressed", 1, seed=2, compress=True)
    first = run_cli("ingest", "--metadata-only", str(tmp_path))
    assert first.exit_code == 0, first.output
    assert "36 files, 36 frames registered, 0 already known, 0 failures" in first.output
    assert rows(database, "SELECT count(*), count(DISTINCT exposure_pk), count(dq_hdu_index) FROM frame") == [
        (36, 2, 36)
    ]
    second = run_cli("ingest", "--metadata-only", str(tmp_path))
    assert "0 frames registered, 36 already known" in second.output
    assert rows(database, "SELECT count(*) FROM frame") == [(36,)]
    assert rows(database, "SELECT count(*) FROM exposure") == [(2,)]
    assert rows(database, "SELECT kind, status, counts->>'frames_new' FROM run ORDER BY id") == [
        ("register", "completed", "36"),
        ("register", "completed", "0"),
    ]


def test_frames_of_a_moved_archive_follow_their_files_and_copies_keep_the_original(
    run_cli, database: Database, tmp_path: Path
) -> None:
    simulate(tmp_path / "archive", 1, seed=1)
    assert run_cli("ingest", "--metadata-only", str(tmp_path / "archive")).exit_code == 0
    (tmp_path / "archive").rename(tmp_path / "moved")
    moved = run_cli("ingest", "--metadata-only", str(tmp_path / "moved"))
    assert "0 frames registered, 18 already known" in moved.output
    paths = [path for (path,) in rows(database, "SELECT path FROM frame")]
    assert len(paths) == 18 and all(path.startswith(str(tmp_path / "moved")) and Path(path).is_file() for path in paths)

    shutil.copytree(tmp_path / "moved", tmp_path / "copy")
    assert run_cli("ingest", "--metadata-only", str(tmp_path / "copy")).exit_code == 0
    assert sorted(path for (path,) in rows(database, "SELECT path FROM frame")) == sorted(paths)


def test_bad_inputs_become_failure_rows_and_exit_code_3(run_cli, database: Database, tmp_path: Path) -> None:
    write_single(tmp_path / "good.fits", FrameSpec(keywords=csst_keywords(obsid="1", chipid=8)))
    (tmp_path / "notes.fits").write_text("not a FITS file at all\n")
    truncate(write_single(tmp_path / "cut.fits", FrameSpec(keywords=csst_keywords(obsid="2"))), 4000)
    write_single(tmp_path / "band.fits", FrameSpec(keywords=csst_keywords(obsid="3", band="Halpha")))
    result = run_cli("ingest", "--metadata-only", str(tmp_path))
    assert result.exit_code == 3
    assert "4 files, 1 frames registered, 0 already known, 3 failures" in result.output
    failures = rows(database, "SELECT path, hdu_index, error_kind, attempts FROM failure ORDER BY path")
    assert [(Path(path).name, hdu, kind, attempts) for path, hdu, kind, attempts in failures] == [
        ("band.fits", 0, "unknown_band", 1),
        ("cut.fits", -1, "truncated", 1),
        ("notes.fits", -1, "not_fits", 1),
    ]
    again = run_cli("ingest", "--metadata-only", str(tmp_path))
    assert again.exit_code == 3
    assert rows(database, "SELECT count(*), max(attempts) FROM failure") == [(3, 2)]


def test_a_fixed_file_loses_its_failure(run_cli, database: Database, tmp_path: Path) -> None:
    path = write_single(tmp_path / "frame.fits", FrameSpec(keywords=csst_keywords(band="Halpha")))
    assert run_cli("ingest", "--metadata-only", str(path)).exit_code == 3
    path.unlink()
    write_single(path, FrameSpec(keywords=csst_keywords(band="G")))
    assert run_cli("ingest", "--metadata-only", str(path)).exit_code == 0
    assert rows(database, "SELECT count(*) FROM failure") == [(0,)]
    assert rows(database, "SELECT band FROM frame") == [("g",)]


def test_missing_path_and_from_file_list(run_cli, database: Database, tmp_path: Path) -> None:
    mef = write_mef(
        tmp_path / "two.fits",
        [
            FrameSpec(keywords=csst_keywords(obsid="7", chipid=6, band="y")),
            FrameSpec(ra=150.2, keywords=csst_keywords(obsid="7", chipid=7, band="i")),
        ],
    )
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# archive list\n{mef}\n\n{tmp_path / 'gone.fits'}\n")
    result = run_cli("ingest", "--metadata-only", "--from-file", str(listing))
    assert result.exit_code == 3
    assert "2 frames registered" in result.output
    assert rows(database, "SELECT error_kind FROM failure") == [("not_found",)]


def test_stored_geometry_matches_the_headers(run_cli, database: Database, tmp_path: Path) -> None:
    from density_db.fits_input import read_frame_headers
    from density_db.instrument import load_profile

    paths = simulate(tmp_path, 1, seed=3, ra=359.95, dec=0.3)
    run_cli("ingest", "--metadata-only", str(tmp_path))
    expected = {h.detector: h for path in paths for h in read_frame_headers(path, load_profile("csst"))}
    stored = rows(
        database,
        "SELECT detector, ra, dec, hpx, corner_ra, footprint_depth, "
        "(SELECT count(*) FROM unnest(footprint)) FROM frame",
    )
    assert len(stored) == 18
    for detector, ra, dec, hpx, corner_ra, depth, n_ranges in stored:
        header = expected[detector]
        assert (ra, dec, hpx, depth) == (header.centre_ra, header.centre_dec, header.hpx, header.footprint_depth)
        assert corner_ra == list(header.corner_ra)
        assert n_ranges == len(header.footprint)


def test_run_records_configuration(run_cli, database: Database, tmp_path: Path) -> None:
    simulate(tmp_path, 1, seed=4, detectors=[8])
    run_cli("ingest", "--metadata-only", "--run-name", "night-1", str(tmp_path))
    [(name, config, host, finished)] = rows(database, "SELECT name, config, host, finished_at IS NOT NULL FROM run")
    assert name == "night-1"
    assert config["profile"] == "csst" and config["paths"] == [str(tmp_path)]
    assert host and finished


def test_concurrent_registrations_of_the_same_inputs_store_each_frame_once(
    database: Database, database_url: str, embedded_home: Path, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    simulate(tmp_path, 6, seed=5)
    environment = {**os.environ, "DENSITY_DB_HOME": str(embedded_home)}
    command = [
        str(Path(sys.executable).with_name("density-db")),
        "--db",
        database_url,
        "-q",
        "ingest",
        "--metadata-only",
        "--batch-size",
        "20",
        str(tmp_path),
    ]
    processes = [
        subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert rows(database, "SELECT count(*), count(DISTINCT (exposure_pk, detector)) FROM frame") == [(108, 108)]
    assert rows(database, "SELECT sum((counts->>'frames_new')::int) FROM run") == [(108,)]


def test_interrupted_registration_is_marked_and_a_rerun_finishes(
    database: Database, database_url: str, embedded_home: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import sys
    import time
    import warnings

    paths = simulate(tmp_path, 2, seed=6)
    command = [
        str(Path(sys.executable).with_name("density-db")),
        "--db",
        database_url,
        "-q",
        "ingest",
        "--metadata-only",
        "--batch-size",
        "1",
        "--from-file",
        "-",
    ]
    environment = {**os.environ, "DENSITY_DB_HOME": str(embedded_home), "PYTHONFAULTHANDLER": "1"}
    # Ctrl-C reaches a program started from a terminal. A suite started in the background without job
    # control (as CI may start it) has SIGINT ignored, and an ignored signal stays ignored across exec,
    # so the child would never see it; a handled one is reset to the default in the child.
    ignored_or_handled = signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(tmp_path / "stderr.txt", "w+") as stderr:  # a file, not a pipe that could fill up unread
        try:
            process = subprocess.Popen(command, env=environment, stdin=subprocess.PIPE, stderr=stderr, text=True)
        finally:
            signal.signal(signal.SIGINT, ignored_or_handled)
        process.stdin.write("".join(f"{path}\n" for path in paths[:18]))
        process.stdin.flush()  # the list stays open: ingest waits for more paths
        deadline = time.monotonic() + 60
        while rows(database, "SELECT count(*) FROM frame") != [(18,)] and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to stderr
            process.wait()
            stderr.seek(0)
            warnings.warn(f"the interrupted ingest hung; its stderr:\n{stderr.read()[-6000:]}", stacklevel=1)
            raise
    assert process.returncode == 130
    assert rows(database, "SELECT status, message FROM run") == [("interrupted", "interrupted by the user")]
    listing = tmp_path / "all.txt"
    listing.write_text("".join(f"{path}\n" for path in paths))
    rerun = subprocess.run([*command[:-1], str(listing)], env=environment, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "18 frames registered, 18 already known" in rerun.stdout
    assert rows(database, "SELECT count(*) FROM frame") == [(36,)]
