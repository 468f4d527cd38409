"""Ingest end to end on full-size detectors: stages alone, Dask overhead, worker scaling, raw read, and sep.

On simulated full-size CSST detectors (9216 x 9232 float32, plain FITS with
``SCI`` and ``DQ``, files in page cache) of a sparse, a medium and a crowded
field, this measures

* each stage alone, per frame, in this process on one core: registration
  (headers and rows), opening the pixels (memory-mapped, as ingest does, so
  the page-cache reads fall in the next stage), preprocessing (the models'
  version: give version 2 checkpoints to time the point-source input), the classifier, the
  regressor (per regressed frame, times the fraction regressed) and the
  database write of the results;
* ``ingest`` end to end (registration, Dask, inference, writes) on a
  local cluster of 1 and of 2 CPU worker processes, after the workers have
  loaded the models: frames/s, the ratio of its time per frame to the sum of
  the stages alone (framework overhead; goal <= 1.3) and the 1 -> 2 worker
  scaling efficiency (goal >= 80 %);
* the raw read of the same files (``cat`` to /dev/null from page cache) as a
  ratio to the end-to-end throughput;
* a classical peer: ``sep`` (SExtractor's algorithms as a library) counting
  sources per frame (background, 1.5 sigma detection, minarea 5) to assign
  the density class, in seconds per frame and class accuracy against the
  simulator's truth, next to density-db's accuracy on the same frames;
* with CUDA, the same end-to-end run on one GPU worker (goal >= 30 frames/s
  on one H100).

Run from the repository root (``pip install sep`` for the classical peer)::

    .venv/bin/python benchmarks/ingest_throughput.py [--per-field 4] [--classifier CKPT --regressor CKPT]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from density_db.embedded import EmbeddedServer
from density_db.flag_rules import flag_rules_in_force
from density_db.inference.checkpoints import demo_checkpoint, load_checkpoint
from density_db.inference.cluster import Cluster
from density_db.inference.driver import IngestOptions, ingest
from density_db.inference.model_registry import ModelPair, resolve_model
from density_db.inference.predictor import TwoStagePredictor
from density_db.inference.worker import FrameTask, loaded_predictor, read_pixels, reduce_pixels
from density_db.instrument import load_profile
from density_db.labels import CLASS_LOWER_EDGES
from density_db.registration import register_paths
from density_db.results import ResultRow, write_results
from density_db.runs import begin_run
from density_db.simulate.exposures import plan_pointings, simulate_exposures
from density_db.simulate.fields import field_by_name
from support import DEFAULT_HOME, RESULTS_DIR, database_software, describe_machine, fresh_database, write_json

FIELDS = (("galactic_l90_b50", 11), ("default", 12), ("galactic_centre", 13))
DETECTORS = (6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25)
OVERHEAD_GOAL = 1.3
SCALING_GOAL = 0.8
GPU_GOAL_FRAMES_PER_S = 30.0


def simulate(out: Path, per_field: int) -> dict[str, int]:
    """Full-size detectors of each field; returns the true density class by path."""
    truth = {}
    for name, seed in FIELDS:
        field = field_by_name(name)
        rows = simulate_exposures(
            out / name,
            plan_pointings(1, seed=seed, field=field),
            detectors=DETECTORS[:per_field],
            seed=seed,
            field=field,
            workers=2,
        )
        truth.update({str(Path(row.path).absolute()): row.density_class for row in rows})
    return truth


def frame_tasks(paths: list[Path]) -> list[FrameTask]:
    """Where each file's science and data-quality HDUs are, as ingest finds them."""
    from density_db.fits_input import read_frame_headers

    profile = load_profile("csst")
    return [FrameTask.of_frame(0, header, profile) for path in paths for header in read_frame_headers(path, profile)]


def stages_alone(database, paths: list[Path], models: dict) -> dict[str, float]:
    """Seconds per frame of each stage run alone, in this process, one torch thread."""
    import torch

    started = time.perf_counter()
    register_paths(database, paths, load_profile("csst"))
    register_s = (time.perf_counter() - started) / len(paths)
    tasks = frame_tasks(paths)
    read, reduce, inputs = [], [], []
    cpu = torch.device("cpu")
    version = models["classifier"].preprocessing_version
    for task in tasks:
        started = time.perf_counter()
        image, quality = read_pixels(task)
        read.append(time.perf_counter() - started)
        started = time.perf_counter()
        calibration = task.calibration.for_pixels(image, quality) if version == 2 else None
        tensor, _statistics = reduce_pixels(
            image, quality, cpu, version=version, calibration=calibration, saturated_bits=task.saturated_bits
        )
        reduce.append(time.perf_counter() - started)
        inputs.append(tensor)
        del image, quality
    batch = torch.stack(inputs)
    classifier, regressor = models["classifier"].model, models["regressor"].model
    with torch.inference_mode():
        classifier(batch), regressor(batch)  # warm-up
        started = time.perf_counter()
        classes = classifier(batch).argmax(dim=1)
        classify_s = (time.perf_counter() - started) / len(batch)
        started = time.perf_counter()
        regressor(batch)
        regress_per_image = (time.perf_counter() - started) / len(batch)
    regressed = int(((classes > 0) & (classes < 5)).sum())
    predictions = TwoStagePredictor(classifier, regressor).predict(batch)
    regress_s = regress_per_image * regressed / len(batch)
    return {
        "register_s": register_s,
        "read_s": statistics.mean(read),
        "preprocess_s": statistics.mean(reduce),
        "classify_s": classify_s,
        "regress_s": regress_s,
        "regressed_fraction": regressed / len(batch),
        "database_write_s": _write_seconds(database, predictions, models),
    }


def _write_seconds(database, predictions, models: dict) -> float:
    """Seconds per frame to store results like ingest does (one batch, after registration)."""
    import sqlalchemy as sa

    with database.engine.connect() as connection:
        frame_ids = connection.execute(sa.text("SELECT id FROM frame ORDER BY id")).scalars().all()
    rows = [
        ResultRow(
            frame_id,
            p.probabilities,
            p.density_class,
            p.confidence,
            p.log_bright,
            p.bright_count,
            p.regression_status,
            1.0,
            0.1,
            0.1,
            0.1,
        )
        for frame_id, p in zip(frame_ids, predictions)
    ]
    with begin_run(database, kind="ingest", name="benchmark write", config={}) as run:
        classifier_id, regressor_id = (
            resolve_model(database, str(models[stage].path), stage=stage).id for stage in ("classifier", "regressor")
        )
        started = time.perf_counter()
        write_results(
            database,
            rows,
            [],
            classifier_id=classifier_id,
            regressor_id=regressor_id,
            run_id=run.id,
            flag_thresholds=flag_rules_in_force(database).thresholds,
        )
        seconds = (time.perf_counter() - started) / len(rows)
        run.finish(status="completed", counts={})
    return seconds


def end_to_end(
    database, paths: list[Path], models: dict, *, workers: int, device: str
) -> tuple[float, dict[str, int], dict[str, float]]:
    """``ingest`` over ``paths`` on a warm local cluster: seconds, the stored classes by path, and the
    stage times the workers recorded (seconds per frame, from ``density_result``)."""
    import sqlalchemy as sa

    pair = ModelPair.resolve(database, str(models["classifier"].path), str(models["regressor"].path))
    with Cluster(scheduler=None, workers=workers, device=device) as cluster:
        spec = pair.worker_spec(device=cluster.device, torch_threads=cluster.torch_threads())
        cluster.client.run(lambda: loaded_predictor(spec) and None)  # models loaded before the clock starts
        started = time.perf_counter()
        ingest(
            database,
            paths,
            models=pair,
            options=IngestOptions(run_name=f"benchmark {workers} {device}"),
            cluster=cluster,
        )
        seconds = time.perf_counter() - started
    with database.engine.connect() as connection:
        stored = dict(
            connection.execute(
                sa.text("SELECT f.path, d.density_class FROM density_result d JOIN frame f ON f.id = d.frame_id")
            ).all()
        )
        in_workers = connection.execute(
            sa.text("SELECT avg(read_seconds), avg(preprocess_seconds), avg(infer_seconds) FROM density_result")
        ).one()
    return seconds, stored, dict(zip(("read_s", "preprocess_s", "infer_s"), map(float, in_workers)))


def raw_read_seconds(paths: list[Path]) -> float:
    """``cat`` of every file to /dev/null, files in page cache (one warm-up pass)."""
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def classical_peer(tasks: list[FrameTask], truth: dict[str, int]) -> dict[str, float] | None:
    """sep's source count per frame turned into a density class: seconds per frame and accuracy."""
    try:
        import sep
    except ImportError:
        return None
    sep.set_extract_pixstack(50_000_000)
    sep.set_sub_object_limit(65_536)
    seconds, correct, failed = [], 0, 0
    for task in tasks:
        started = time.perf_counter()
        image, quality = read_pixels(task)
        data = np.asarray(image, dtype=np.float32)  # sep needs native byte order
        mask = ~np.isfinite(data) | (quality != 0)
        data[mask] = 0.0
        try:
            background = sep.Background(data, mask=mask)
            data -= background.back()
            count = len(sep.extract(data, 1.5, err=background.globalrms, mask=mask, minarea=5))
        except Exception:  # noqa: BLE001 - sep gives up on the most crowded fields; counted as wrong
            failed += 1
            count = -1
        seconds.append(time.perf_counter() - started)
        predicted = int(np.searchsorted(CLASS_LOWER_EDGES, count, side="right")) - 1 if count >= 0 else -1
        correct += predicted == truth[task.path]
    return {
        "seconds_per_frame": statistics.mean(seconds),
        "accuracy": correct / len(tasks),
        "frames_sep_gave_up": failed,
        "sep": sep.__version__,
    }


def main(arguments: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    server = EmbeddedServer(arguments.home)
    status = server.ensure_running()
    models = {
        stage: load_checkpoint(_checkpoint(getattr(arguments, stage), stage), stage=stage)
        for stage in ("classifier", "regressor")
    }
    with tempfile.TemporaryDirectory(dir=arguments.scratch) as scratch:
        print(f"simulating {arguments.per_field} full-size detectors in each of {len(FIELDS)} fields ...")
        truth = simulate(Path(scratch), arguments.per_field)
        paths = sorted(Path(path) for path in truth)
        size_mib = sum(path.stat().st_size for path in paths) / 2**20
        stages = stages_alone(fresh_database(server, status, "benchmark_ingest"), paths, models)
        stage_sum = sum(value for key, value in stages.items() if key.endswith("_s"))
        runs = {}
        for workers in (1, 2):
            seconds, stored, in_workers = end_to_end(
                fresh_database(server, status, "benchmark_ingest"), paths, models, workers=workers, device="cpu"
            )
            runs[workers] = {
                "seconds": seconds,
                "frames_per_s": len(paths) / seconds,
                "stages_in_workers_s_per_frame": in_workers,
            }
        accuracy = sum(stored[path] == cls for path, cls in truth.items()) / len(truth)
        gpu = None
        if torch.cuda.is_available():
            seconds, _stored, in_workers = end_to_end(
                fresh_database(server, status, "benchmark_ingest"), paths, models, workers=1, device="cuda"
            )
            gpu = {
                "seconds": seconds,
                "frames_per_s": len(paths) / seconds,
                "stages_in_workers_s_per_frame": in_workers,
            }
        raw_s = raw_read_seconds(paths)
        peer = classical_peer(frame_tasks(paths), truth)
    machine = describe_machine(
        {"torch": torch.__version__, "torch threads per worker": "1", **database_software(server.url(status))}
    )
    figures = {
        "machine": machine.describe(),
        "models": {
            stage: {
                "architecture": loaded.architecture,
                "sha256": loaded.sha256,
                "preprocessing_version": loaded.preprocessing_version,
            }
            for stage, loaded in models.items()
        },
        "frames": len(paths),
        "mib_on_disk": size_mib,
        "stages_alone_s_per_frame": stages,
        "stages_sum_s_per_frame": stage_sum,
        "end_to_end": runs,
        "overhead_ratio_1_worker": runs[1]["seconds"] / len(paths) / stage_sum,
        "overhead_goal": OVERHEAD_GOAL,
        "scaling_efficiency_1_to_2": runs[2]["frames_per_s"] / (2 * runs[1]["frames_per_s"]),
        "scaling_goal": SCALING_GOAL,
        "raw_read_frames_per_s": len(paths) / raw_s,
        "raw_read_mib_per_s": size_mib / raw_s,
        "density_db_class_accuracy": accuracy,
        "classical_peer_sep": peer,
        "gpu_end_to_end": gpu,
        "gpu_goal_frames_per_s": GPU_GOAL_FRAMES_PER_S,
    }
    report(figures)
    write_json(arguments.json, machine, figures)
    print(f"figures written to {arguments.json}")


def _checkpoint(name_or_path: str, stage: str) -> Path:
    return demo_checkpoint(stage) if name_or_path == "demo" else Path(name_or_path)


def report(figures: dict) -> None:
    stages = figures["stages_alone_s_per_frame"]
    print(f"machine: {figures['machine']}")
    models = figures["models"]
    print(
        f"{figures['frames']} full-size detectors, {figures['mib_on_disk']:.0f} MiB; models "
        f"{models['classifier']['architecture']} + {models['regressor']['architecture']}, preprocessing version "
        f"{models['classifier']['preprocessing_version']}"
    )
    print("stages alone, seconds per frame (one core):")
    for name in ("register_s", "read_s", "preprocess_s", "classify_s", "regress_s", "database_write_s"):
        print(f"  {name[:-2]:16s} {stages[name]:.4f}")
    print(
        f"  {'sum':16s} {figures['stages_sum_s_per_frame']:.4f}  "
        f"(regressor ran on {stages['regressed_fraction']:.0%} of the frames)"
    )
    for workers, run in figures["end_to_end"].items():
        inside = run["stages_in_workers_s_per_frame"]
        print(
            f"end to end, {workers} CPU worker(s): {run['frames_per_s']:.2f} frames/s ({run['seconds']:.1f} s); "
            f"as timed inside the workers: read {inside['read_s']:.3f} s, preprocess {inside['preprocess_s']:.3f} s, "
            f"infer {inside['infer_s']:.4f} s per frame"
        )
    print(f"overhead, 1 worker: {figures['overhead_ratio_1_worker']:.2f}x the stages' sum (goal <= {OVERHEAD_GOAL})")
    print(f"scaling 1 -> 2 workers: {figures['scaling_efficiency_1_to_2']:.0%} (goal >= {SCALING_GOAL:.0%})")
    best = max(run["frames_per_s"] for run in figures["end_to_end"].values())
    print(
        f"raw read (cat, page cache): {figures['raw_read_frames_per_s']:.1f} frames/s "
        f"({figures['raw_read_mib_per_s']:.0f} MiB/s); ingest at 2 workers is "
        f"{best / figures['raw_read_frames_per_s']:.3f} of it"
    )
    print(f"density-db class accuracy on these frames: {figures['density_db_class_accuracy']:.0%}")
    peer = figures["classical_peer_sep"]
    if peer is None:
        print("classical peer: sep is not installed (pip install sep), not measured")
    else:
        print(
            f"classical peer, sep {peer['sep']}: {peer['seconds_per_frame']:.2f} s per frame, "
            f"class accuracy {peer['accuracy']:.0%} ({peer['frames_sep_gave_up']} frames sep gave up on)"
        )
    gpu = figures["gpu_end_to_end"]
    if gpu is None:
        print("GPU: no CUDA device on this machine, not measured")
    else:
        print(f"GPU, 1 worker: {gpu['frames_per_s']:.1f} frames/s (goal >= {GPU_GOAL_FRAMES_PER_S:g})")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-field", type=int, default=4, help="detectors per field (3 fields)")
    parser.add_argument("--classifier", default="demo", help="checkpoint path, or 'demo'")
    parser.add_argument("--regressor", default="demo", help="checkpoint path, or 'demo'")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="DENSITY_DB_HOME of the benchmark server")
    parser.add_argument("--scratch", type=Path, default=None, help="where the simulated files go (about 0.5 GB each)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "ingest.json")
    return parser.parse_args()


if __name__ == "__main__":
    main(_arguments())
