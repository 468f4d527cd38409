"""``density-db ingest`` with inference: results, idempotence and fault tolerance.

Real PostgreSQL, real Dask clusters (a LocalCluster of worker processes), real
FITS files; the models are small untrained networks (their answers do not
matter here, only that every frame gets exactly one of them), except where a
test builds a network that always answers one class to check the gating.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed.diagnostics.plugin import WorkerPlugin

from density_db.database import Database
from fits_factory import PIXEL_SCALE_DEG, FrameSpec, csst_keywords, image_hdu, truncate, write_single

IMAGE_SHAPE = (256, 256)


def rows(database: Database, statement: str) -> list[tuple]:
    import sqlalchemy as sa

    with database.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(statement))]


def write_survey(directory: Path, count: int, *, first_exposure: int = 0) -> list[Path]:
    """``count`` single-HDU detector images of distinct exposures, 256 x 256 px."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(first_exposure, first_exposure + count):
        spec = FrameSpec(
            ra=150.0 + 0.3 * index,
            dec=2.0,
            shape=IMAGE_SHAPE,
            keywords=csst_keywords(obsid=f"101{index:08d}", chipid=8, band="g"),
        )
        paths.append(write_single(directory / f"frame_{index:04d}.fits", spec, seed=index))
    return paths


def save_model(
    path: Path,
    stage: str,
    *,
    always_class: int | None = None,
    version: int = 1,
    domain: tuple[int, int] | None = None,
    pixel_scale_arcsec: float = 0.074,
) -> Path:
    """An untrained baseline CNN checkpoint of preprocessing ``version``; with ``always_class``, a classifier
    that always answers that class; with ``domain``, trained (it says) on images of that shape and scale."""
    from density_db.inference.architectures import build_model
    from density_db.inference.checkpoints import save_checkpoint

    torch.manual_seed(0)
    network = build_model(stage, "baseline_cnn", in_channels=4 if version == 2 else 2)
    if always_class is not None:
        final = network[-1]
        with torch.no_grad():
            final.weight.zero_()
            final.bias.fill_(-10.0)
            final.bias[always_class] = 10.0
    metadata = {"preprocessing_version": version}
    if domain is not None:
        metadata["training_domain"] = {"image_shape": list(domain), "pixel_scale_arcsec": pixel_scale_arcsec}
    save_checkpoint(path, network, stage=stage, architecture="baseline_cnn", metadata=metadata)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "classifier": save_model(folder / "classifier.pt", "classifier"),
        "regressor": save_model(folder / "regressor.pt", "regressor"),
        "always_empty": save_model(folder / "empty.pt", "classifier", always_class=0),
        "always_crowded": save_model(folder / "crowded.pt", "classifier", always_class=5),
        "always_class_3": save_model(folder / "class3.pt", "classifier", always_class=3),
    }


@pytest.fixture(scope="module")
def scheduler() -> str:
    """A two-worker local cluster shared by the module's tests, given to ingest as --scheduler.

    Started through ``Cluster``, which puts back the environment Dask's nannies change.
    """
    from density_db.inference.cluster import Cluster

    with Cluster(scheduler=None, workers=2, device="cpu") as cluster:
        yield cluster.client.scheduler_info()["address"]


def model_options(models: dict[str, Path], classifier: str = "classifier") -> list[str]:
    return ["--classifier", str(models[classifier]), "--regressor", str(models["regressor"])]


def test_every_frame_gets_one_result_and_a_second_run_adds_nothing(
    run_cli, database: Database, tmp_path: Path, models, scheduler
) -> None:
    write_survey(tmp_path / "survey", 12)
    first = run_cli("-q", "ingest", str(tmp_path / "survey"), *model_options(models), "--scheduler", scheduler)
    assert first.exit_code == 0, first.output
    assert "12 frames classified" in first.output
    assert rows(database, "SELECT count(*), count(DISTINCT frame_id) FROM density_result") == [(12, 12)]
    # Provenance: the run names its models; results carry timings and the frames their valid fraction.
    assert rows(
        database,
        """
        SELECT r.kind, r.status, c.stage, g.stage, (r.counts->>'results')::int
        FROM run r JOIN model c ON c.id = r.classifier_id JOIN model g ON g.id = r.regressor_id""",
    ) == [("ingest", "completed", "classifier", "regressor", 12)]
    assert rows(
        database,
        """
        SELECT count(*) FROM density_result d JOIN frame f ON f.id = d.frame_id
        WHERE d.read_seconds > 0 AND d.preprocess_seconds > 0 AND d.infer_seconds > 0
          AND f.valid_fraction = 1 AND cardinality(d.probabilities) = 6""",
    ) == [(12,)]
    second = run_cli("-q", "ingest", str(tmp_path / "survey"), *model_options(models), "--scheduler", scheduler)
    assert second.exit_code == 0, second.output
    assert "0 frames classified" in second.output and "12 had results already" in second.output
    assert rows(database, "SELECT count(*) FROM density_result") == [(12,)]


def test_without_model_options_the_shipped_demo_models_are_used(
    run_cli, database: Database, tmp_path: Path, scheduler
) -> None:
    write_survey(tmp_path / "survey", 2)
    result = run_cli("-q", "ingest", str(tmp_path / "survey"), "--scheduler", scheduler)
    assert result.exit_code == 0, result.output
    assert "with demo-classifier + demo-regressor" in result.output
    # trained on full-size detectors: these 256 x 256 frames are outside what they know, and the user is told
    assert "2 frames differ in shape or pixel scale from the models' training images" in result.output
    assert rows(
        database, "SELECT count(*) FROM density_result WHERE 'outside_training_domain' = ANY(flag_names(flags))"
    ) == [(2,)]
    models = rows(database, "SELECT name, architecture, metadata->>'trained_on' FROM model ORDER BY name")
    assert [name for name, _architecture, _trained_on in models] == ["demo-classifier", "demo-regressor"]
    assert all("simulat" in trained_on for _name, _architecture, trained_on in models)


def test_a_version_2_pair_reads_each_frames_calibration_and_flags_frames_unlike_its_training_images(
    run_cli, database: Database, tmp_path: Path, scheduler
) -> None:
    """Zero point and FWHM from the header or the profile's band values; no exposure time is a failure row."""
    write_survey(tmp_path / "survey", 2)  # g, no calibration keywords: the profile's g values
    keyed = FrameSpec(
        ra=152.0,
        dec=2.0,
        shape=IMAGE_SHAPE,
        keywords=csst_keywords(obsid="10300000001", band="r", MAGZERO=25.9, PSF_FWHM=2.1),
    )
    write_single(tmp_path / "survey" / "keyed.fits", keyed)
    untimed = FrameSpec(ra=153.0, dec=2.0, shape=IMAGE_SHAPE, keywords=csst_keywords(obsid="10300000002", exptime=None))
    write_single(tmp_path / "survey" / "untimed.fits", untimed)
    here = [
        save_model(
            tmp_path / f"{stage}_here.pt",
            stage,
            version=2,
            domain=IMAGE_SHAPE,
            pixel_scale_arcsec=PIXEL_SCALE_DEG * 3600,
        )
        for stage in ("classifier", "regressor")
    ]
    result = run_cli(
        "-q",
        "ingest",
        str(tmp_path / "survey"),
        "--classifier",
        str(here[0]),
        "--regressor",
        str(here[1]),
        "--scheduler",
        scheduler,
    )
    assert result.exit_code == 3, result.output
    assert "3 frames classified" in result.output and "differ in shape" not in result.output
    [(kind, message)] = rows(database, "SELECT error_kind, message FROM failure")
    assert kind == "no_calibration" and "needs an exposure time" in message and "untimed.fits" in message
    assert rows(database, "SELECT DISTINCT CAST(config->>'preprocessing_version' AS int) FROM run") == [(2,)]
    assert rows(database, "SELECT count(*) FROM density_result WHERE flags & 256 = 0") == [(3,)]

    elsewhere = [
        save_model(tmp_path / f"{stage}_{scale}.pt", stage, version=2, domain=shape, pixel_scale_arcsec=scale)
        for stage, shape, scale in (("classifier", IMAGE_SHAPE, 0.074), ("regressor", IMAGE_SHAPE, 10.0))
    ]
    result = run_cli(
        "-q",
        "ingest",
        str(tmp_path / "survey"),
        "--classifier",
        str(elsewhere[0]),
        "--regressor",
        str(elsewhere[1]),
        "--scheduler",
        scheduler,
    )
    assert "3 frames differ in shape or pixel scale from the models' training images" in result.output
    assert rows(
        database, "SELECT count(*) FROM density_result WHERE 'outside_training_domain' = ANY(flag_names(flags))"
    ) == [(3,)]


def test_stages_of_different_preprocessing_versions_are_refused(run_cli, tmp_path: Path, models) -> None:
    v2 = save_model(tmp_path / "v2.pt", "classifier", version=2)
    result = run_cli("-q", "ingest", str(tmp_path), "--classifier", str(v2), "--regressor", str(models["regressor"]))
    assert result.exit_code == 1
    assert "the two stages take different model inputs" in result.output and "preprocessing version 1" in result.output


def test_rerun_replaces_the_stored_results(run_cli, database: Database, tmp_path: Path, models, scheduler) -> None:
    write_survey(tmp_path / "survey", 4)
    arguments = ["-q", "ingest", str(tmp_path / "survey"), *model_options(models), "--scheduler", scheduler]
    assert run_cli(*arguments).exit_code == 0
    assert run_cli(*arguments, "--rerun").exit_code == 0
    assert rows(database, "SELECT count(*), min(run_id), max(run_id) FROM density_result") == [(4, 2, 2)]


@pytest.mark.parametrize(
    ("classifier", "expected"),
    [
        ("always_empty", (0, "empty", 0.0, 0.0, {"few_references"})),
        ("always_crowded", (5, "bypassed", None, None, {"crowded", "extreme"})),
        ("always_class_3", (3, "predicted", "number", "number", set())),
    ],
)
def test_gating_and_flags_are_stored_per_frame(
    run_cli, database: Database, tmp_path: Path, models, scheduler, classifier, expected
) -> None:
    write_survey(tmp_path / "survey", 3)
    result = run_cli(
        "-q", "ingest", str(tmp_path / "survey"), *model_options(models, classifier), "--scheduler", scheduler
    )
    assert result.exit_code == 0, result.output
    stored = rows(
        database,
        "SELECT density_class, regression_status, log_bright, bright_count, flag_names(flags), "
        "flags_run_id = run_id FROM density_result",
    )
    assert len(stored) == 3
    for density_class, status, log_bright, bright_count, flags, flagged_by_the_ingest in stored:
        assert (density_class, status) == expected[:2]
        if expected[2] == "number":
            assert log_bright is not None and bright_count >= 0
            assert bright_count == pytest.approx(max(10**log_bright - 1, 0), rel=1e-5, abs=1e-6)
        else:
            assert (log_bright, bright_count) == expected[2:4]
        # an untrained regressor's counts and probabilities vary; the gating's flags do not
        assert expected[4] <= set(flags) and flagged_by_the_ingest


def test_bad_inputs_end_as_failure_rows_while_good_ones_are_stored(
    run_cli, database: Database, tmp_path: Path, models, scheduler
) -> None:
    paths = write_survey(tmp_path / "survey", 6)
    (tmp_path / "survey" / "corrupt.fits").write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)
    blank = FrameSpec(shape=IMAGE_SHAPE, keywords=csst_keywords(obsid="10200000001"))
    image_hdu(blank, np.random.default_rng(0), primary=True, data=np.full(IMAGE_SHAPE, np.nan, np.float32)).writeto(
        tmp_path / "survey" / "all_nan.fits"
    )
    result = run_cli("-q", "ingest", str(tmp_path / "survey"), *model_options(models), "--scheduler", scheduler)
    assert result.exit_code == 3, result.output
    assert "2 failures" in result.output
    assert rows(database, "SELECT stage, error_kind FROM failure ORDER BY stage") == [
        ("inference", "all_invalid"),
        ("register", "truncated"),
    ]
    assert rows(database, "SELECT count(*) FROM density_result") == [(len(paths),)]


def model_spec(models: dict[str, Path], device: str = "cpu"):
    """What a worker is given to load the test models, for calling the worker's task directly."""
    from density_db.inference.checkpoints import file_sha256
    from density_db.inference.worker import CheckpointFile, ModelSpec

    return ModelSpec(
        *(
            CheckpointFile(str(models[stage]), file_sha256(models[stage]), "baseline_cnn")
            for stage in ("classifier", "regressor")
        ),
        device=device,
    )


@pytest.mark.filterwarnings("ignore:File may have been truncated")  # astropy's, before it raises
@pytest.mark.parametrize(
    ("change", "kind", "message"),
    [
        ("deleted", "not_found", "no longer exists"),
        # The pixels are memory-mapped: a file now shorter than its headers say must fail cleanly, not SIGBUS.
        ("cut short", "unreadable", "cannot read the pixels of HDU 0"),
    ],
)
def test_a_file_changed_since_registration_is_a_failure_not_a_crash(
    tmp_path: Path, models, change: str, kind: str, message: str
) -> None:
    from density_db.inference.worker import FrameTask, process_shard

    good, changed = write_survey(tmp_path, 2)
    if change == "deleted":
        changed.unlink()
    else:
        truncate(changed, changed.stat().st_size // 2)
    outcome = process_shard([FrameTask(1, str(good), 0, None), FrameTask(2, str(changed), 0, None)], model_spec(models))
    assert [row.frame_id for row in outcome.results] == [1]
    assert [(f.frame_id, f.error_kind) for f in outcome.failures] == [(2, kind)]
    assert message in outcome.failures[0].message


def test_a_missing_model_is_a_clear_error(run_cli, tmp_path: Path, models) -> None:
    write_survey(tmp_path / "survey", 1)
    result = run_cli(
        "ingest", str(tmp_path / "survey"), "--classifier", "no-such-model", "--regressor", str(models["regressor"])
    )
    assert result.exit_code == 1
    assert "no registered model is named 'no-such-model'" in result.output
    swapped = run_cli(
        "ingest",
        str(tmp_path / "survey"),
        "--classifier",
        str(models["regressor"]),
        "--regressor",
        str(models["regressor"]),
    )
    assert swapped.exit_code == 1
    assert "classifier" in swapped.output


# -- fault tolerance -----------------------------------------------------------------------


def _run_in_process(database: Database, paths: list[Path], models, cluster, *, progress, **options):
    """Ingest through the Python API on ``cluster`` (a Cluster), with a progress hook that injects a fault."""
    from density_db.inference import IngestOptions, ModelPair, ingest

    pair = ModelPair.resolve(database, str(models["classifier"]), str(models["regressor"]))
    return ingest(
        database, paths, models=pair, options=IngestOptions(**options), cluster=cluster, progress=progress
    ).counts


def test_a_worker_killed_mid_run_loses_nothing(database: Database, tmp_path: Path, models) -> None:
    from density_db.inference.cluster import Cluster

    paths = write_survey(tmp_path / "survey", 24)
    killed = []
    with Cluster(scheduler=None, workers=2, device="cpu") as cluster:

        def kill_a_worker_once(counts) -> None:
            if counts.processed >= 2 and not killed:
                pids = cluster.client.run(os.getpid)
                victim = sorted(pids.values())[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        counts = _run_in_process(
            database, paths, models, cluster, progress=kill_a_worker_once, shard_size=1, max_in_flight=4, write_batch=1
        )
    assert killed, "the run ended before a worker could be killed"
    assert counts.failures == 0
    assert rows(database, "SELECT count(*), count(DISTINCT frame_id) FROM density_result") == [(24, 24)]


class DieReadingPoisonedFiles(WorkerPlugin):
    """A Dask worker plugin: the worker dies of SIGBUS, as under a file truncated while memory-mapped,
    whenever it reads a file whose name starts with ``poisoned``.  Plugins reach restarted workers too."""

    name = "die-reading-poisoned-files"

    def setup(self, worker) -> None:
        from density_db.inference import worker as worker_task

        read_pixels = worker_task.read_pixels

        def read_or_die(task):
            if Path(task.path).name.startswith("poisoned"):
                os.kill(os.getpid(), signal.SIGBUS)
            return read_pixels(task)

        worker_task.read_pixels = read_or_die


def test_a_frame_that_kills_every_worker_reading_it_is_a_failure_and_its_shard_mates_are_stored(
    database: Database, tmp_path: Path, models
) -> None:
    import dask

    from density_db.inference.cluster import Cluster

    paths = write_survey(tmp_path / "survey", 5)
    poisoned = paths[2].rename(paths[2].with_name("poisoned.fits"))
    # One death marks a task as killing workers (Dask's default waits for four), and a worker holds
    # only the task it runs, so that no innocent task queued behind the poisoned one shares the blame.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}):
        with Cluster(scheduler=None, workers=2, device="cpu") as cluster:
            cluster.client.register_plugin(DieReadingPoisonedFiles())
            counts = _run_in_process(
                database,
                [*paths[:2], poisoned, *paths[3:]],
                models,
                cluster,
                progress=lambda counts: None,
                shard_size=5,
            )
    assert counts.failures == 1
    assert rows(database, "SELECT path, stage, error_kind FROM failure") == [
        (str(poisoned.absolute()), "inference", "worker_died")
    ]
    assert rows(database, "SELECT count(*), count(DISTINCT frame_id) FROM density_result") == [(4, 4)]


def test_a_dropped_database_connection_is_survived(database: Database, tmp_path: Path, models) -> None:
    import sqlalchemy as sa

    from density_db.inference.cluster import Cluster

    paths = write_survey(tmp_path / "survey", 16)
    dropped = []

    def drop_connections_once(counts) -> None:
        if counts.processed >= 4 and not dropped:
            # Every other session on this database is killed, as a server restart would.
            with sa.create_engine(database.url, poolclass=sa.pool.NullPool).connect() as connection:
                dropped.extend(
                    connection.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    ).scalars()
                )

    with Cluster(scheduler=None, workers=1, device="cpu") as cluster:
        _run_in_process(
            database,
            paths,
            models,
            cluster,
            progress=drop_connections_once,
            shard_size=1,
            max_in_flight=2,
            write_batch=1,
        )
    assert dropped, "no connection was dropped"
    assert rows(database, "SELECT count(*), count(DISTINCT frame_id) FROM density_result") == [(16, 16)]
    assert rows(database, "SELECT status FROM run") == [("completed",)]


def _ingest_command(database_url: str, models, *extra: str) -> list[str]:
    return [
        str(Path(sys.executable).with_name("density-db")),
        "--db",
        database_url,
        "-q",
        "ingest",
        *model_options(models),
        "--workers",
        "1",
        "--shard-size",
        "1",
        *extra,
    ]


def test_a_killed_ingest_is_marked_interrupted_and_a_rerun_finishes(
    database: Database, database_url: str, embedded_home: Path, tmp_path: Path, models
) -> None:
    paths = write_survey(tmp_path / "survey", 10)
    environment = {**os.environ, "DENSITY_DB_HOME": str(embedded_home)}
    # The input list stays open after six paths: ingest finishes those and waits for more.
    process = subprocess.Popen(
        _ingest_command(database_url, models, "--from-file", "-", "--batch-size", "1"),
        env=environment,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdin.write("".join(f"{path}\n" for path in paths[:6]))
    process.stdin.flush()
    deadline = time.monotonic() + 120
    while rows(database, "SELECT count(*) FROM density_result") != [(6,)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rows(database, "SELECT count(*) FROM density_result") == [(6,)]
    process.kill()
    process.wait(timeout=30)
    assert rows(database, "SELECT status FROM run") == [("running",)]  # nobody could close it
    rerun = subprocess.run(
        _ingest_command(database_url, models, str(tmp_path / "survey")),
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "4 frames classified" in rerun.stdout and "6 had results already" in rerun.stdout
    assert rows(database, "SELECT count(*), count(DISTINCT frame_id) FROM density_result") == [(10, 10)]
    statuses = rows(database, "SELECT status, message FROM run ORDER BY id")
    assert statuses[0][0] == "interrupted" and "killed" in statuses[0][1]
    assert statuses[1] == ("completed", None)


def test_concurrent_ingests_of_overlapping_inputs_store_each_result_once(
    database: Database, database_url: str, embedded_home: Path, tmp_path: Path, models
) -> None:
    paths = write_survey(tmp_path / "survey", 16)
    environment = {**os.environ, "DENSITY_DB_HOME": str(embedded_home)}
    halves = [paths[:12], paths[4:]]
    processes = []
    for index, part in enumerate(halves):
        listing = tmp_path / f"list{index}.txt"
        listing.write_text("".join(f"{path}\n" for path in part))
        processes.append(
            subprocess.Popen(
                _ingest_command(database_url, models, "--from-file", str(listing)),
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert not any("rror" in stderr for _stdout, stderr in outputs), outputs
    assert rows(database, "SELECT count(*), count(DISTINCT frame_id) FROM density_result") == [(16, 16)]
    assert rows(database, "SELECT count(*) FROM frame") == [(16,)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_worker_answers_like_a_cpu_worker(tmp_path: Path, models) -> None:
    from density_db.inference.worker import FrameTask, process_shard

    tasks = [FrameTask(index, str(path), 0, None) for index, path in enumerate(write_survey(tmp_path, 4))]
    outcomes = {device: process_shard(tasks, model_spec(models, device)) for device in ("cpu", "cuda")}
    for cpu, gpu in zip(outcomes["cpu"].results, outcomes["cuda"].results):
        # bfloat16 autocast on CUDA: probabilities agree to about 1e-2
        np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=2e-2)
        assert gpu.valid_fraction == cpu.valid_fraction


def test_a_local_cluster_leaves_the_environment_of_this_process_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    # Dask's nannies write the workers' allocator settings into os.environ; later subprocesses
    # (a FITS renderer, another ingest) must not inherit them.
    from density_db.inference.cluster import WORKER_MALLOC_ENVIRONMENT, Cluster

    for name in (*WORKER_MALLOC_ENVIRONMENT, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    with Cluster(scheduler=None, workers=1, device="cpu") as cluster:
        assert cluster.client.ncores()
    assert dict(os.environ) == before


def test_the_library_and_the_command_line_pace_an_ingest_alike() -> None:
    # IngestOptions owns the defaults: shards of 2 frames on CPU workers, 64 on a GPU, and twice the
    # worker threads in flight; what a caller sets is kept.
    from density_db.inference import IngestOptions
    from density_db.inference.cluster import Cluster

    cpu = Cluster(scheduler=None, workers=3, device="cpu")  # a local cluster starts on first use only
    paced = IngestOptions().for_cluster(cpu)
    assert (paced.shard_size, paced.max_in_flight) == (2, 6)
    assert IngestOptions(shard_size=5, max_in_flight=1).for_cluster(cpu).shard_size == 5
    assert IngestOptions(shard_size=5, max_in_flight=1).for_cluster(cpu).max_in_flight == 1
    cpu.device = "cuda"
    assert IngestOptions().for_cluster(cpu).shard_size == 64
