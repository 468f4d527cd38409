"""Simulator throughput on one CPU core (and on a GPU where there is one): exposures and dataset modes.

What it measures, on full-size CSST detectors (9216 x 9232 pixels):

* exposures mode, for N stars on one detector (1e3, 1e4 and 2e5 by default):
  the seconds of each stage of :func:`density_db.simulate.exposures.simulate_detector`
  -- draw the truth catalog (:func:`~density_db.simulate.catalog.draw_catalog`
  with exactly N stars, no galaxies), render it
  (:func:`~density_db.simulate.render.render_detector`), write the image as
  exposures mode writes it (its ``_write_image``: primary, ``SCI`` and ``DQ``
  HDUs) as plain ``.fits`` and, separately, tile-compressed ``.fits.fz``, and
  write the truth catalog -- with their totals, and the peak resident memory
  of the process (Linux's VmHWM; goal <= 2 GiB).  ``simulate_detector``
  itself cannot be used: it draws the number of stars from the field model.
  Each N runs in a fresh spawned process (its peak is that of the imports
  and the work alone), on the central detector slot (13) of a pointing
  planned in the named field whose Lai et al. (2026) Table 1 range holds N
  (the Galactic centre for 1e4 and 2e5), in band r.  Files go to a temporary directory: the
  writes reach the page cache, not necessarily the disk;
* dataset mode: images/s of :func:`density_db.simulate.dataset.preprocessed_sample`
  on the samples that :func:`~density_db.simulate.dataset.plan_samples` plans
  for each task (``classify``: the paper's class mix, with galaxies, class 5
  with 1e5-2e5 detectable stars; ``regress``: up to 5e3 detectable stars,
  with galaxies), of preprocessing version ``--preprocessing-version`` (2 by
  default), against the goal of >= 2 images/s per core for version 1
  (cell-level noise, no full-resolution pixels) and >= 1 for version 2
  (which draws the pixel noise its point sources are counted on), then
  for comparison the full-resolution path of the same samples,
  :func:`~density_db.simulate.dataset.simulate_sample` then
  :func:`density_db.inference.preprocessing.preprocess`; and one class-5
  extreme (2e5 detectable stars, undimmed, in band r, no galaxies), which a
  short plan may not draw;
* :func:`~density_db.simulate.dataset.write_dataset` of the ``classify``
  samples with 2 worker processes: images/s overall and its speed-up over
  the one-core time of the same samples measured before it.

Where a CUDA device is available, dataset mode is also timed with
``device="cuda"`` (goal >= 100 images/s on one H100): one process per task,
then ``write_dataset`` with a spawned worker per CPU core feeding the GPU.

Everything but ``write_dataset`` runs on one core: ``torch.set_num_threads(1)``
and ``OPENBLAS_NUM_THREADS=1`` (also OMP, MKL) before NumPy loads, so that
no BLAS call can use a thread per core; NumPy's
random draws, FFTs and reductions are single-threaded.  The output gives CPU
time over wall time for each, which should be about 1.  One tiny
untimed simulation first warms up astropy (its first Galactic transform).

Run from the repository root (under 2 minutes on 2 cores with the defaults)::

    .venv/bin/python benchmarks/simulation.py
    .venv/bin/python benchmarks/simulation.py --stars 1000 200000 --samples 4
"""

from __future__ import annotations

import os

# One core means one BLAS thread too: preprocess's np.dot would run on OpenBLAS's threads (one per core,
# spinning between calls).  Only effective before NumPy loads; spawned and forked workers inherit it.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

import astropy
import numpy as np
from astropy.wcs import WCS

from density_db.focal_plane import DETECTOR_SHAPE, detector_wcs_header
from density_db.inference.preprocessing import preprocess
from density_db.labels import LABEL_RULE
from density_db.simulate.catalog import draw_catalog
from density_db.simulate.dataset import (
    TASKS,
    SampleSpec,
    plan_samples,
    preprocessed_sample,
    simulate_sample,
    write_dataset,
)
from density_db.simulate.exposures import DetectorJob, _write_image, plan_pointings
from density_db.simulate.fields import NAMED_FIELDS, Field
from density_db.simulate.photometry import image_calibration
from density_db.simulate.render import QUALITY_SATURATED, render_detector
from support import RESULTS_DIR, Machine, describe_machine, peak_rss_mib, write_json

DETECTOR = 13
"""The central slot, as dataset mode uses; only the WCS depends on it."""
BAND = "r"
DEFAULT_STARS = (1_000, 10_000, 200_000)
CLASS5_EXTREME_STARS = 200_000
CLASS5_EXTREME_FIELD = "default"
"""No dust screen: every star keeps its brightness, so the stamps are as large as plan_samples can make them."""

PEAK_RSS_GOAL_GIB = 2.0
IMAGES_PER_S_GOALS = {1: 2.0, 2: 1.0}
"""Dataset-mode goal per CPU core, by preprocessing version (version 2 draws the pixel noise)."""
GPU_IMAGES_PER_S_GOAL = 100.0
DATASET_WORKERS = 2

Result = TypeVar("Result")


# -- the machine ---------------------------------------------------------------------------


def describe_this_machine() -> Machine:
    import torch

    return describe_machine(
        {
            "NumPy": np.__version__,
            "astropy": astropy.__version__,
            "torch": f"{torch.__version__} ({torch.get_num_threads()} thread)",
            "OPENBLAS_NUM_THREADS": os.environ["OPENBLAS_NUM_THREADS"],
        }
    )


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Stopwatch:
    """Wall and CPU seconds of this process, accumulated over the calls it timed."""

    wall_s: float = 0.0
    cpu_s: float = 0.0

    def time(self, call: Callable[[], Result]) -> tuple[Result, float]:
        """Run ``call``; return its result and its wall seconds (also added to the totals)."""
        wall, cpu = time.perf_counter(), time.process_time()
        result = call()
        elapsed = time.perf_counter() - wall
        self.wall_s += elapsed
        self.cpu_s += time.process_time() - cpu
        return result, elapsed

    @property
    def cpu_over_wall(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else float("nan")


def warm_up() -> None:
    """A tiny simulation, untimed: astropy's first Galactic transform and WCS set-up take a good part of a second."""
    field, shape = NAMED_FIELDS["default"], (256, 256)  # preprocess needs at least 224 x 224
    header = detector_wcs_header(DETECTOR, ra=sum(field.ra_range) / 2, dec=sum(field.dec_range) / 2, shape=shape)
    rng = np.random.default_rng(0)
    catalog = draw_catalog(WCS(header), shape, BAND, rng, field=field, counted=10, include_galaxies=True)
    image = render_detector(catalog, shape, BAND, rng)
    preprocess(image.science, image.quality)


# -- exposures mode -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExposureFigures:
    """One full-size detector with a chosen number of stars, written as exposures mode writes it."""

    stars: int
    field: str
    band: str
    draw_s: float
    render_s: float
    write_plain_s: float
    write_compressed_s: float
    write_truth_s: float
    plain_mib: float
    compressed_mib: float
    cpu_over_wall: float
    rss_after_imports_mib: float
    peak_rss_mib: float

    @property
    def total_plain_s(self) -> float:
        """Draw, render, plain image and truth catalog: exposures mode without compression."""
        return self.draw_s + self.render_s + self.write_plain_s + self.write_truth_s

    @property
    def total_compressed_s(self) -> float:
        return self.draw_s + self.render_s + self.write_compressed_s + self.write_truth_s

    @property
    def memory_verdict(self) -> str:
        return "met" if self.peak_rss_mib <= PEAK_RSS_GOAL_GIB * 1024 else "MISSED"


def field_for(stars: int) -> Field:
    """The first named field whose Table 1 range of stars per detector holds ``stars`` (else ``default``)."""
    for field in NAMED_FIELDS.values():
        lower, upper = field.stellar_density_range
        if lower <= stars <= upper:
            return field
    return NAMED_FIELDS["default"]


def measure_exposure(stars: int, seed: int, scratch: Path) -> ExposureFigures:
    """Draw, render and write one full-size detector with ``stars`` stars; run in a fresh process."""
    warm_up()
    rss_after_imports = peak_rss_mib()
    field = field_for(stars)
    pointing = plan_pointings(1, seed=seed, field=field)[0]
    rng = np.random.default_rng(np.random.SeedSequence([seed, stars]))
    header = detector_wcs_header(
        DETECTOR,
        ra=pointing.ra,
        dec=pointing.dec,
        position_angle_deg=pointing.position_angle_deg,
        shape=DETECTOR_SHAPE,
    )
    stopwatch = Stopwatch()
    catalog, draw_s = stopwatch.time(
        lambda: draw_catalog(
            WCS(header),
            DETECTOR_SHAPE,
            BAND,
            rng,
            field=field,
            counted=stars,
            rule="catalog-stars",
            include_galaxies=False,
        )
    )
    image, render_s = stopwatch.time(lambda: render_detector(catalog, DETECTOR_SHAPE, BAND, rng))
    sizes, write_s = {}, {}
    with tempfile.TemporaryDirectory(dir=scratch) as directory:
        for compress in (False, True):
            job = DetectorJob(pointing, DETECTOR, BAND, DETECTOR_SHAPE, seed, field, False, Path(directory), compress)
            path = Path(directory) / f"CSST_MSC_{pointing.exposure_id}_{DETECTOR:02d}.fits{'.fz' if compress else ''}"
            write = partial(_write_image, path, job, header, image.science, image.quality)
            _, write_s[compress] = stopwatch.time(write)
            sizes[compress] = path.stat().st_size / 2**20
            path.unlink()

        def write_truth() -> None:
            # as simulate_detector writes it
            truth = catalog.to_table()
            truth.meta.update({"OBSID": pointing.exposure_id, "CHIPID": DETECTOR, "SIMSEED": seed})
            truth.write(Path(directory) / f"CSST_MSC_{pointing.exposure_id}_{DETECTOR:02d}_truth.fits")

        _, write_truth_s = stopwatch.time(write_truth)
    return ExposureFigures(
        stars=catalog.star_count,
        field=field.name,
        band=BAND,
        draw_s=draw_s,
        render_s=render_s,
        write_plain_s=write_s[False],
        write_compressed_s=write_s[True],
        write_truth_s=write_truth_s,
        plain_mib=sizes[False],
        compressed_mib=sizes[True],
        cpu_over_wall=stopwatch.cpu_over_wall,
        rss_after_imports_mib=rss_after_imports,
        peak_rss_mib=peak_rss_mib(),
    )


def in_fresh_process(function: Callable[..., Result], *arguments: Any) -> Result:
    """``function(*arguments)`` in a new spawned process (not forked: its memory starts from nothing)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *arguments).result()


# -- dataset mode ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleFigures:
    """One dataset-mode sample: preprocessed_sample timed whole, then split into its two stages."""

    task: str
    index: int
    star_count: int
    density_class: int
    galaxy_count: int
    field: str
    band: str
    sample_s: float
    simulate_s: float
    preprocess_s: float


@dataclass(frozen=True)
class TaskFigures:
    """Dataset mode on one core for the samples of one task."""

    name: str
    samples: int
    min_stars: int
    max_stars: int
    classes: tuple[int, ...]
    images_per_s: float
    mean_sample_s: float
    slowest_sample_s: float
    mean_simulate_s: float
    mean_preprocess_s: float
    cpu_over_wall: float

    version: int

    @property
    def verdict(self) -> str:
        return "met" if self.images_per_s >= IMAGES_PER_S_GOALS[self.version] else "MISSED"


def measure_samples(task: str, specs: list[SampleSpec], version: int) -> tuple[list[SampleFigures], float]:
    """Time each spec through preprocessed_sample, then through simulate_sample and preprocess; CPU/wall too."""
    stopwatch = Stopwatch()
    figures = []
    for spec in specs:
        (_, labels), sample_s = stopwatch.time(partial(preprocessed_sample, spec, version=version))
        (catalog, image), simulate_s = stopwatch.time(partial(simulate_sample, spec))
        options = (
            {"version": 2, "calibration": image_calibration(spec.band), "saturated_bits": QUALITY_SATURATED}
            if version == 2
            else {}
        )
        _, preprocess_s = stopwatch.time(partial(preprocess, image.science, image.quality, **options))
        del image
        figures.append(
            SampleFigures(
                task=task,
                index=spec.index,
                star_count=labels.star_count,
                density_class=labels.density_class,
                galaxy_count=labels.galaxy_count,
                field=spec.field,
                band=spec.band,
                sample_s=sample_s,
                simulate_s=simulate_s,
                preprocess_s=preprocess_s,
            )
        )
    return figures, stopwatch.cpu_over_wall


def summarise(name: str, samples: list[SampleFigures], cpu_over_wall: float, version: int) -> TaskFigures:
    sample_seconds = [sample.sample_s for sample in samples]
    return TaskFigures(
        name=name,
        samples=len(samples),
        min_stars=min(sample.star_count for sample in samples),
        max_stars=max(sample.star_count for sample in samples),
        classes=tuple(sorted({sample.density_class for sample in samples})),
        images_per_s=len(samples) / sum(sample_seconds),
        mean_sample_s=statistics.fmean(sample_seconds),
        slowest_sample_s=max(sample_seconds),
        mean_simulate_s=statistics.fmean(sample.simulate_s for sample in samples),
        mean_preprocess_s=statistics.fmean(sample.preprocess_s for sample in samples),
        cpu_over_wall=cpu_over_wall,
        version=version,
    )


def class5_extreme(seed: int) -> SampleSpec:
    """The heaviest sample plan_samples can ask for: 2e5 detectable stars, no dust, stars only."""
    field = NAMED_FIELDS[CLASS5_EXTREME_FIELD]
    return SampleSpec(
        index=0,
        seed=seed,
        counted=CLASS5_EXTREME_STARS,
        label_rule=LABEL_RULE,
        galaxies=False,
        band=BAND,
        field=field.name,
        ra=sum(field.ra_range) / 2,
        dec=sum(field.dec_range) / 2,
        position_angle_deg=0.0,
        detector=DETECTOR,
    )


@dataclass(frozen=True)
class WriteDatasetFigures:
    task: str
    samples: int
    workers: int
    wall_s: float
    images_per_s: float
    one_core_s: float
    """preprocessed_sample seconds of the same samples on one core, measured earlier in the run."""

    @property
    def speed_up(self) -> float:
        return self.one_core_s / self.wall_s


def measure_write_dataset(
    task: str, specs: list[SampleSpec], one_core_s: float, scratch: Path, version: int
) -> WriteDatasetFigures:
    with tempfile.TemporaryDirectory(dir=scratch) as directory:
        started = time.perf_counter()
        write_dataset(
            Path(directory) / "dataset", specs, task=task, balance="paper", workers=DATASET_WORKERS, version=version
        )
        wall_s = time.perf_counter() - started
    return WriteDatasetFigures(
        task=task,
        samples=len(specs),
        workers=DATASET_WORKERS,
        wall_s=wall_s,
        images_per_s=len(specs) / wall_s,
        one_core_s=one_core_s,
    )


# -- report ---------------------------------------------------------------------------------


def print_exposures(exposures: list[ExposureFigures]) -> None:
    print(
        f"exposures mode, one full-size detector {DETECTOR_SHAPE[0]} x {DETECTOR_SHAPE[1]} on one core, "
        f"band {BAND}, stars only, each in a fresh process (seconds; MiB):"
    )
    columns = (
        "draw",
        "render",
        "plain",
        "fz",
        "truth",
        "total",
        "total fz",
        "cpu/wall",
        "plain MiB",
        "fz MiB",
        "RSS imp.",
        "peak RSS",
    )
    print(f"{'stars':>8} {'field':<18} " + " ".join(f"{column:>9}" for column in columns))
    for figures in exposures:
        values = (
            figures.draw_s,
            figures.render_s,
            figures.write_plain_s,
            figures.write_compressed_s,
            figures.write_truth_s,
            figures.total_plain_s,
            figures.total_compressed_s,
            figures.cpu_over_wall,
        )
        print(
            f"{figures.stars:>8,} {figures.field:<18} "
            + " ".join(f"{value:>9.2f}" for value in values)
            + f" {figures.plain_mib:>9.0f} {figures.compressed_mib:>9.0f} {figures.rss_after_imports_mib:>9.0f} "
            f"{figures.peak_rss_mib:>9.0f}  peak <= {PEAK_RSS_GOAL_GIB:g} GiB: {figures.memory_verdict}"
        )
    print(
        "  total = draw + render + plain image + truth catalog; total fz the same with the tile-compressed image; "
        "RSS imp. = peak after imports and warm-up"
    )


def print_dataset(tasks: list[TaskFigures], extreme: SampleFigures, write: WriteDatasetFigures) -> None:
    version = tasks[0].version
    print(
        f"dataset mode on one core, full-size samples, preprocessing version {version} "
        f"(goal >= {IMAGES_PER_S_GOALS[version]:g} images/s per core):"
    )
    columns = ("images/s", "mean s", "slowest s", "simulate", "preproc.", "cpu/wall")
    print(f"{'task':<10} {'samples':>7} {'stars':>15} {'classes':>12} " + " ".join(f"{c:>9}" for c in columns))
    for task in tasks:
        stars = f"{task.min_stars:,}-{task.max_stars:,}"
        classes = ",".join(str(density_class) for density_class in task.classes)
        print(
            f"{task.name:<10} {task.samples:>7} {stars:>15} {classes:>12} {task.images_per_s:>9.2f} "
            f"{task.mean_sample_s:>9.2f} {task.slowest_sample_s:>9.2f} {task.mean_simulate_s:>9.2f} "
            f"{task.mean_preprocess_s:>9.2f} {task.cpu_over_wall:>9.2f}  {task.verdict}"
        )
    print(
        f"class-5 extreme ({extreme.star_count:,} stars, {extreme.field} field, band {extreme.band}): "
        f"preprocessed_sample {extreme.sample_s:.2f} s ({1 / extreme.sample_s:.2f} images/s); "
        f"simulate_sample {extreme.simulate_s:.2f} s, preprocess {extreme.preprocess_s:.2f} s"
    )
    print(
        f"write_dataset({write.task}, {write.samples} samples, workers={write.workers}): {write.wall_s:.1f} s, "
        f"{write.images_per_s:.2f} images/s overall, {write.images_per_s / write.workers:.2f} per worker; "
        f"{write.speed_up:.2f}x the one-core preprocessed_sample time of the same samples ({write.one_core_s:.1f} s)"
    )


# -- main ---------------------------------------------------------------------------------


def measure_gpu(plans: dict[str, list[SampleSpec]], seed: int, scratch: Path) -> dict[str, Any] | None:
    """Dataset mode with ``device="cuda"``: one process per task, then write_dataset with a worker per core.

    ``None`` where no CUDA device is available.  The CPU still draws every
    catalog and stamp, so a worker per core feeds the GPU.
    """
    import torch

    if not torch.cuda.is_available():
        return None
    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "goal_images_per_s": GPU_IMAGES_PER_S_GOAL}
    for task, specs in plans.items():
        preprocessed_sample(specs[0], device="cuda")  # CUDA context and kernels, not timed
        started = time.perf_counter()
        for spec in specs:
            preprocessed_sample(spec, device="cuda")
        figures[f"{task}_one_process_images_per_s"] = len(specs) / (time.perf_counter() - started)
    workers = os.cpu_count() or 1
    specs = plan_samples(8 * workers, task="classify", seed=seed, balance="paper")
    with tempfile.TemporaryDirectory(dir=scratch) as directory:
        started = time.perf_counter()
        write_dataset(Path(directory) / "set", specs, task="classify", balance="paper", workers=workers, device="cuda")
        figures["write_dataset_workers"] = workers
        figures["write_dataset_images_per_s"] = len(specs) / (time.perf_counter() - started)
    return figures


def print_gpu(gpu: dict[str, Any] | None) -> None:
    if gpu is None:
        print("dataset mode on a GPU: no CUDA device on this machine, not measured")
        return
    print(f"dataset mode on {gpu['device']} (goal >= {GPU_IMAGES_PER_S_GOAL} images/s):")
    for task in TASKS:
        print(f"  {task}: {gpu[f'{task}_one_process_images_per_s']:.1f} images/s in one process")
    print(
        f"  write_dataset(classify, {gpu['write_dataset_workers']} workers, start-up included): "
        f"{gpu['write_dataset_images_per_s']:.1f} images/s"
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stars",
        type=int,
        nargs="+",
        default=list(DEFAULT_STARS),
        help="star counts of the exposures-mode detectors (default 1000 10000 200000)",
    )
    parser.add_argument("--samples", type=int, default=12, help="dataset-mode samples per task (default 12)")
    parser.add_argument("--seed", type=int, default=2027, help="seed of the pointings and sample plans")
    parser.add_argument(
        "--preprocessing-version",
        type=int,
        choices=(1, 2),
        default=2,
        help="the model input dataset mode makes (default 2)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the temporary FITS files and dataset go (default the system's temporary directory)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "simulation.json", help="where to write the figures")
    arguments = parser.parse_args()
    if arguments.samples < 1 or any(stars < 0 for stars in arguments.stars):
        parser.error("--samples must be positive and --stars not negative")
    return arguments


def main(arguments: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    machine = describe_this_machine()
    exposures = []
    for stars in arguments.stars:
        print(f"exposures mode: {stars:,} stars ...", flush=True)
        exposures.append(in_fresh_process(measure_exposure, stars, arguments.seed, arguments.scratch))
    warm_up()
    samples, tasks, plans = [], [], {}
    version = arguments.preprocessing_version
    for task in TASKS:
        print(f"dataset mode: {arguments.samples} {task} samples ...", flush=True)
        plans[task] = plan_samples(arguments.samples, task=task, seed=arguments.seed, balance="paper")
        task_samples, cpu_over_wall = measure_samples(task, plans[task], version)
        samples += task_samples
        tasks.append(summarise(task, task_samples, cpu_over_wall, version))
    print("dataset mode: class-5 extreme ...", flush=True)
    [extreme], _ = measure_samples("classify", [class5_extreme(arguments.seed)], version)
    print(f"dataset mode: write_dataset with {DATASET_WORKERS} workers ...", flush=True)
    one_core_s = sum(sample.sample_s for sample in samples if sample.task == "classify")
    write = measure_write_dataset("classify", plans["classify"], one_core_s, arguments.scratch, version)

    gpu = measure_gpu(plans, arguments.seed, arguments.scratch)

    print(f"\nmachine: {machine.describe()}\n")
    print_exposures(exposures)
    print()
    print_dataset(tasks, extreme, write)
    print()
    print_gpu(gpu)
    write_json(
        arguments.json,
        machine,
        {
            "seed": arguments.seed,
            "detector_shape": list(DETECTOR_SHAPE),
            "preprocessing_version": version,
            "goals": {"peak_rss_gib": PEAK_RSS_GOAL_GIB, "images_per_s_per_core": IMAGES_PER_S_GOALS[version]},
            "exposures": [
                asdict(figures)
                | {"total_plain_s": figures.total_plain_s, "total_compressed_s": figures.total_compressed_s}
                for figures in exposures
            ],
            "dataset_tasks": [asdict(task) for task in tasks],
            "dataset_samples": [asdict(sample) for sample in samples],
            "class5_extreme": asdict(extreme),
            "write_dataset": asdict(write) | {"speed_up": write.speed_up},
            "gpu": gpu,
        },
    )
    print(f"\nfigures written to {arguments.json}")


if __name__ == "__main__":
    main(parse_arguments())
