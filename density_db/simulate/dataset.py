"""Dataset mode: training sets of preprocessed model inputs, without writing FITS files.

Each sample is a full-size detector image simulated with the same catalog
and rendering code as exposures mode, reduced to the 2 x 224 x 224 model
input through the preprocessing module's cell sums
(:func:`density_db.simulate.render.render_model_input`; the tensor equals
preprocessing the full-resolution image of the same seed).  The paper's
input (preprocessing version 1) never needs the per-pixel noise; version 2
(the default) counts point-like sources on the pixels, so it draws their
noise, which costs about as much as the rest of the sample.  Samples go
into shards of ``SHARD_SIZE`` float16 arrays (``shard_00000.npy`` ...,
memory-mappable) with one row per sample in ``samples.ecsv`` (labels and
simulation parameters) and the dataset's description in ``dataset.json``.

Targets (the count drawn is of the stars the label rule counts,
:mod:`density_db.labels`: by default those brighter than the image's
5-sigma depth; the catalog then holds the fainter stars that come with them):

* ``classify``: a density class is drawn from the paper's class mix
  (Table 2, ``balance="paper"``) or uniformly (``"uniform"``), then a count
  log-uniform within the class (class 5: 10^5 to 2 x 10^5);
* ``regress``: a count log-uniform from 0 to 5 000, which puts 0 to over
  2000 stars brighter than 23.5 mag on the images.

Both put galaxies on the images, since real images hold them (a classifier
never shown one takes galaxies for stars); ``galaxies=False`` makes the
paper's stars-only classification set.

Sample ``i`` of a seed is simulated from its own random stream, keyed by
(seed, i), so a dataset does not depend on the number of workers;
:func:`simulate_sample` makes the full-resolution image of a sample.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from density_db import __version__
from density_db.focal_plane import DETECTOR_SHAPE, PIXEL_SCALE_ARCSEC, detector_wcs_header
from density_db.inference.datasets import DESCRIPTION_NAME, SAMPLES_NAME
from density_db.inference.preprocessing import CHANNELS, DEFAULT_PREPROCESSING_VERSION
from density_db.labels import BRIGHT_MAGNITUDE_LIMIT, CLASS_LOWER_EDGES, INPUT_SIZE, LABEL_RULE, N_CLASSES, label_rule
from density_db.simulate.catalog import TruthCatalog, draw_catalog
from density_db.simulate.fields import NAMED_FIELDS
from density_db.simulate.render import RenderedImage, render_detector, render_model_input

logger = logging.getLogger(__name__)

SHARD_SIZE = 512
TASKS = ("classify", "regress")
PAPER_CLASS_MIX = np.array([1120, 3324, 11050, 4622, 1411, 1033]) / 22560
"""Training-set class fractions of Lai et al. (2026), Table 2."""

_CLASS5_MAX_STARS = 200_000
_REGRESSION_MAX_STARS = 5_000
BANDS = ("NUV", "u", "g", "r", "i", "z", "y")
"""The bands a sample is drawn in, each equally likely."""


@dataclass(frozen=True)
class SampleSpec:
    """What to simulate for one sample: enough to redo it exactly."""

    index: int
    seed: int
    counted: int
    """Stars the label rule counts, asked for."""
    label_rule: str
    galaxies: bool
    band: str
    field: str
    ra: float
    dec: float
    position_angle_deg: float
    detector: int


@dataclass(frozen=True)
class SampleLabels:
    """Labels of a simulated sample (from its truth catalog) and its statistics."""

    star_count: int
    counting_limit: float
    counted_star_count: int
    bright_star_count: int
    density_class: int
    log_bright: float
    galaxy_count: int
    valid_fraction: float


def plan_samples(
    count: int, *, task: str, seed: int, balance: str = "paper", galaxies: bool = True, rule: str = LABEL_RULE
) -> list[SampleSpec]:
    """Draw the parameters of ``count`` samples for ``task``, deterministically for ``seed``.

    ``galaxies=False`` leaves galaxies off the images (the paper's
    stars-only classification set); ``rule`` is the label rule.  The other
    parameters drawn depend on neither.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if balance not in ("paper", "uniform"):
        raise ValueError(f"balance must be 'paper' or 'uniform', got {balance!r}")
    label_rule(rule)
    fields = sorted(NAMED_FIELDS)
    specs = []
    for index in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0xDA7A]))
        if task == "classify":
            mix = PAPER_CLASS_MIX if balance == "paper" else np.full(N_CLASSES, 1 / N_CLASSES)
            counted = _stars_in_class(int(rng.choice(N_CLASSES, p=mix)), rng)
        else:
            counted = int(np.floor(10 ** rng.uniform(0, np.log10(_REGRESSION_MAX_STARS + 1)))) - 1
        field = NAMED_FIELDS[fields[int(rng.integers(len(fields)))]]
        specs.append(
            SampleSpec(
                index=index,
                seed=seed,
                counted=counted,
                label_rule=rule,
                galaxies=galaxies,
                band=BANDS[int(rng.integers(len(BANDS)))],
                field=field.name,
                ra=float(rng.uniform(*field.ra_range)),
                dec=float(rng.uniform(*field.dec_range)),
                position_angle_deg=float(rng.uniform(0, 360)),
                detector=13,  # the central slot: the WCS only places the sources
            )
        )
    return specs


def _stars_in_class(density_class: int, rng: np.random.Generator) -> int:
    """A star count drawn log-uniformly within a density class."""
    if density_class == 0:
        return 0
    lower = CLASS_LOWER_EDGES[density_class]
    upper = CLASS_LOWER_EDGES[density_class + 1] - 1 if density_class + 1 < N_CLASSES else _CLASS5_MAX_STARS
    return int(np.clip(np.floor(10 ** rng.uniform(np.log10(lower), np.log10(upper + 1))), lower, upper))


def _catalog(spec: SampleSpec, shape: tuple[int, int]) -> tuple[TruthCatalog, np.random.Generator]:
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, spec.index]))
    header = detector_wcs_header(
        spec.detector, ra=spec.ra, dec=spec.dec, position_angle_deg=spec.position_angle_deg, shape=shape
    )
    catalog = draw_catalog(
        WCS(header),
        shape,
        spec.band,
        rng,
        field=NAMED_FIELDS[spec.field],
        counted=spec.counted,
        include_galaxies=spec.galaxies,
        rule=spec.label_rule,
    )
    return catalog, rng


def truth_catalog(spec: SampleSpec, *, shape: tuple[int, int] = DETECTOR_SHAPE) -> TruthCatalog:
    """The truth catalog of a sample, the source of its labels, without rendering its image."""
    return _catalog(spec, shape)[0]


def simulate_sample(spec: SampleSpec, *, shape: tuple[int, int] = DETECTOR_SHAPE) -> tuple[TruthCatalog, RenderedImage]:
    """One sample as a full-resolution image (what exposures mode would write): catalog and image."""
    catalog, rng = _catalog(spec, shape)
    return catalog, render_detector(catalog, shape, spec.band, rng)


def preprocessed_sample(
    spec: SampleSpec,
    shape: tuple[int, int] = DETECTOR_SHAPE,
    *,
    device: str | None = None,
    version: int = DEFAULT_PREPROCESSING_VERSION,
) -> tuple[np.ndarray, SampleLabels]:
    """One sample as the model sees it (preprocessing ``version``), with its labels, without writing a file.

    Equal to ``preprocess`` of :func:`simulate_sample`'s image for the same
    spec: the image channels to the precision stated in
    :mod:`density_db.simulate.noise` (version 1 never draws the pixel
    noise), version 2's point-source counts exactly; ``device`` (a torch
    device) does the full-size work there, same result.
    """
    catalog, rng = _catalog(spec, shape)
    tensor, statistics = render_model_input(catalog, shape, spec.band, rng, device=device, version=version)
    labels = SampleLabels(
        star_count=catalog.star_count,
        counting_limit=catalog.counting_limit,
        counted_star_count=catalog.counted_star_count,
        bright_star_count=catalog.bright_star_count,
        density_class=catalog.density_class,
        log_bright=float(np.log10(1 + catalog.bright_star_count)),
        galaxy_count=int(np.count_nonzero(catalog.obj_type == "galaxy")),
        valid_fraction=statistics.valid_fraction,
    )
    return tensor, labels


def _preprocessed(job: tuple[SampleSpec, tuple[int, int], str | None, int]) -> tuple[np.ndarray, SampleLabels]:
    spec, shape, device, version = job
    tensor, labels = preprocessed_sample(spec, shape, device=device, version=version)
    return tensor.astype(np.float16), labels


def write_dataset(
    out: Path,
    specs: list[SampleSpec],
    *,
    task: str,
    balance: str,
    shape: tuple[int, int] = DETECTOR_SHAPE,
    workers: int = 1,
    device: str | None = None,
    version: int = DEFAULT_PREPROCESSING_VERSION,
    progress: Callable[[], None] | None = None,
) -> Table:
    """Simulate, preprocess (``version``, :data:`~density_db.inference.preprocessing.CHANNELS`) and store
    every sample; return the samples table.

    ``device`` (a torch device such as ``"cuda"``) does each sample's
    full-size work there; worker processes are then spawned, not forked,
    as CUDA requires.  Refuses to write into a directory that already holds
    a dataset, so that shards of two datasets are never mixed.
    """
    if version not in CHANNELS:
        raise ValueError(f"preprocessing version must be one of {sorted(CHANNELS)}, got {version}")
    if (out / DESCRIPTION_NAME).exists():
        raise FileExistsError(f"{out} already holds a dataset ({DESCRIPTION_NAME}); choose a new directory")
    rules = {spec.label_rule for spec in specs} or {LABEL_RULE}
    if len(rules) > 1:
        raise ValueError(f"the samples of one dataset share a label rule, got {sorted(rules)}")
    rule = rules.pop()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    context = multiprocessing.get_context("spawn" if device is not None else None)
    pool_or_none = ProcessPoolExecutor(max_workers=workers, mp_context=context) if workers > 1 else None
    with pool_or_none or contextlib.nullcontext() as pool:
        jobs = ((spec, shape, device, version) for spec in specs)
        results = (pool.map if pool is not None else map)(_preprocessed, jobs)
        for shard_index, shard in enumerate(_chunks(zip(specs, results, strict=True), SHARD_SIZE)):
            tensors = np.stack([tensor for _, (tensor, _) in shard])
            np.save(out / f"shard_{shard_index:05d}.npy", tensors)
            for offset, (spec, (_, labels)) in enumerate(shard):
                rows.append({**asdict(spec), **asdict(labels), "shard": shard_index, "offset": offset})
                if progress is not None:
                    progress()
    table = Table(rows=rows) if rows else Table()
    table.meta["label_rule"] = rule
    table.write(out / SAMPLES_NAME, format="ascii.ecsv", overwrite=True)
    description = {
        "task": task,
        "balance": balance,
        "galaxies": any(spec.galaxies for spec in specs),
        "samples": len(rows),
        "shard_size": SHARD_SIZE,
        "shards": -(-len(rows) // SHARD_SIZE),
        "dtype": "float16",
        "input_size": INPUT_SIZE,
        "image_shape": list(shape),
        "pixel_scale_arcsec": PIXEL_SCALE_ARCSEC,
        "device": device or "cpu",
        "preprocessing_version": version,
        "input_channels": list(CHANNELS[version]),
        "class_lower_edges": list(CLASS_LOWER_EDGES),
        "bright_magnitude_limit": BRIGHT_MAGNITUDE_LIMIT,
        "label_rule": rule,
        "label_rule_description": label_rule(rule).description,
        "density_db_version": __version__,
    }
    (out / DESCRIPTION_NAME).write_text(json.dumps(description, indent=1) + "\n")
    return table


def _chunks(items, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
