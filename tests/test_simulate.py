"""Exposures and dataset modes of the simulator: files honour the input contract, labels agree, seeds decide."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from density_db import sky
from density_db.errors import ConfigurationError
from density_db.focal_plane import DETECTOR_SHAPE, detector_wcs_header
from density_db.inference.checkpoints import file_sha256
from density_db.inference.datasets import SimulatedDataset
from density_db.inference.preprocessing import CHANNELS, preprocess
from density_db.labels import density_class
from density_db.simulate.dataset import (
    DESCRIPTION_NAME,
    PAPER_CLASS_MIX,
    SAMPLES_NAME,
    plan_samples,
    simulate_sample,
    truth_catalog,
    write_dataset,
)
from density_db.simulate.exposures import imaging_detectors, plan_pointings, simulate_exposures
from density_db.simulate.fields import field_by_name
from density_db.simulate.photometry import image_calibration
from density_db.simulate.render import QUALITY_SATURATED

SMALL = (300, 320)


@pytest.fixture(scope="module")
def small_survey(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("survey")
    pointings = plan_pointings(2, seed=5, field=field_by_name("galactic_l90_b20"))
    rows = simulate_exposures(out, pointings, shape=SMALL, seed=5, field=field_by_name("galactic_l90_b20"))
    return out, rows


def test_every_detector_of_every_exposure_is_written_with_its_truth(small_survey) -> None:
    out, rows = small_survey
    assert len(rows) == 2 * 18
    manifest = Table.read(out / "manifest.ecsv")
    assert len(manifest) == 36
    for row in manifest:
        truth = Table.read(row["truth_path"])
        stars = truth["obj_type"] == "star"
        assert stars.sum() == row["star_count"] == truth.meta["NSTARS"]
        assert (truth["mag"][stars] < 23.5).sum() == row["bright_star_count"]
        counted = (truth["mag"][stars] < truth.meta["CNTLIM"]).sum()
        assert counted == row["counted_star_count"] == truth.meta["NCOUNTED"]
        assert row["density_class"] == density_class(int(counted)) == truth.meta["DENSCLS"]
        assert ((truth["x"] >= -0.5) & (truth["x"] < SMALL[1] - 0.5)).all()


def test_written_files_ingest_without_failures(small_survey, run_cli, database) -> None:
    import sqlalchemy as sa

    out, _ = small_survey
    result = run_cli("ingest", "--metadata-only", str(out))
    assert result.exit_code == 0, result.output
    assert "36 files, 36 frames registered, 0 already known, 0 failures" in result.output
    with database.engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT detector, band FROM frame")).all()
    assert {(detector, band) for detector, band in stored} == set(imaging_detectors().items())


def test_images_carry_sources_saturation_and_flags(small_survey) -> None:
    out, rows = small_survey
    brightest = max(rows, key=lambda row: row.bright_star_count)
    with fits.open(brightest.path) as hdus:
        science, quality = hdus["SCI"].data, hdus["DQ"].data
        assert hdus[0].header["EXPTIME"] == 150
        assert hdus["SCI"].header["BUNIT"] == "ADU"
    assert np.array_equal(np.isnan(science), quality != 0) or (np.isnan(science) <= (quality != 0)).all()
    background = np.nanmedian(science)
    assert np.nanmax(science) > background + 100


def test_detectors_tile_the_focal_plane_in_row_major_order_without_overlap() -> None:
    centres, corners = {}, {}
    for detector in imaging_detectors():
        wcs = WCS(detector_wcs_header(detector, ra=30.0, dec=0.0, shape=DETECTOR_SHAPE))
        ny, nx = DETECTOR_SHAPE
        centres[detector] = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
        corners[detector] = wcs.pixel_to_world_values(
            [-0.5, nx - 0.5, nx - 0.5, -0.5], [-0.5, -0.5, ny - 0.5, ny - 0.5]
        )
    for detector, (ra, dec) in centres.items():
        row, column = divmod(detector - 1, 5)
        for other, (other_ra, other_dec) in centres.items():
            other_row, other_column = divmod(other - 1, 5)
            if other_row == row and other_column > column:
                assert other_ra > ra  # columns run east at position angle 0
            if other_column == column and other_row > row:
                assert other_dec < dec  # rows run south
            if other != detector:
                inside = sky.polygon_contains(*map(np.asarray, corners[other]), *map(np.asarray, corners[detector]))
                assert not np.any(inside), (detector, other)


def test_seed_decides_whatever_the_workers_and_detector_subset(tmp_path) -> None:
    pointings = plan_pointings(1, seed=11, ra=10.0, dec=-40.0)
    serial = simulate_exposures(tmp_path / "a", pointings, shape=SMALL, seed=11, detectors=[8, 9, 23])
    parallel = simulate_exposures(tmp_path / "b", pointings, shape=SMALL, seed=11, detectors=[23, 9], workers=2)
    by_detector = {row.detector: row for row in serial}
    for row in parallel:
        with fits.open(row.path) as mine, fits.open(by_detector[row.detector].path) as theirs:
            np.testing.assert_array_equal(mine["SCI"].data, theirs["SCI"].data)
            np.testing.assert_array_equal(mine["DQ"].data, theirs["DQ"].data)
    other_seed = simulate_exposures(
        tmp_path / "c", plan_pointings(1, seed=12, ra=10.0, dec=-40.0), shape=SMALL, seed=12, detectors=[9]
    )
    with fits.open(other_seed[0].path) as first, fits.open(by_detector[9].path) as second:
        assert not np.array_equal(first["SCI"].data, second["SCI"].data)


def test_classify_plan_follows_the_paper_mix_or_balances() -> None:
    paper = plan_samples(3000, task="classify", seed=1)
    counts = np.bincount([density_class(spec.counted) for spec in paper], minlength=6)
    np.testing.assert_allclose(counts / 3000, PAPER_CLASS_MIX, atol=4 * np.sqrt(0.25 / 3000))
    uniform = plan_samples(3000, task="classify", seed=1, balance="uniform")
    counts = np.bincount([density_class(spec.counted) for spec in uniform], minlength=6)
    np.testing.assert_allclose(counts / 3000, 1 / 6, atol=4 * np.sqrt(0.25 / 3000))
    assert all(spec.galaxies for spec in paper)  # real images hold galaxies
    assert {spec.label_rule for spec in paper} == {"detectable-stars"}


def test_stars_only_plan_draws_the_same_samples_without_galaxies() -> None:
    with_galaxies = plan_samples(50, task="classify", seed=4)
    stars_only = plan_samples(50, task="classify", seed=4, galaxies=False)
    assert not any(spec.galaxies for spec in stars_only)
    assert [replace(spec, galaxies=False) for spec in with_galaxies] == stars_only
    assert not any(spec.galaxies for spec in plan_samples(5, task="regress", seed=4, galaxies=False))


def test_regress_plan_reaches_beyond_2000_bright_stars_with_galaxies() -> None:
    from density_db.simulate.catalog import draw_catalog

    specs = plan_samples(400, task="regress", seed=2)
    assert all(spec.galaxies for spec in specs)
    assert min(spec.counted for spec in specs) == 0
    richest = max(specs, key=lambda spec: spec.counted)
    header = detector_wcs_header(13, ra=richest.ra, dec=richest.dec, shape=DETECTOR_SHAPE)
    catalog = draw_catalog(
        WCS(header), DETECTOR_SHAPE, "z", np.random.default_rng(0), counted=richest.counted, include_galaxies=False
    )
    assert catalog.bright_star_count > 2000


@pytest.mark.parametrize("version", [1, 2])
def test_dataset_mode_equals_writing_the_fits_file_and_preprocessing_it(tmp_path, version) -> None:
    """Same seed, same tensor: the shortcut (cell-level noise, expected pixel variance) against the file.

    Tolerance of the image channels: 2e-3 absolute plus 1e-3 relative, which
    covers float16 storage (1e-3 relative) and the expected-versus-realised
    standard deviation of the valid pixels (about 1e-3 at most on these
    images).  Version 2's point-source counts are equal: the same pixels,
    and small counts (and their quarters) are exact in float16.
    """
    shape = (450, 460)
    specs = plan_samples(3, task="regress", seed=7)
    samples = write_dataset(tmp_path / "set", specs, task="regress", balance="paper", shape=shape, version=version)
    shard = np.load(tmp_path / "set" / "shard_00000.npy")
    assert shard.dtype == np.float16 and shard.shape == (3, len(CHANNELS[version]), 224, 224)
    for spec, row in zip(specs, samples, strict=True):
        catalog, image = simulate_sample(spec, shape=shape)
        path = tmp_path / f"sample_{spec.index}.fits"
        fits.HDUList(
            [fits.PrimaryHDU(), fits.ImageHDU(image.science, name="SCI"), fits.ImageHDU(image.quality, name="DQ")]
        ).writeto(path)
        with fits.open(path) as hdus:
            from_file, _ = preprocess(
                hdus["SCI"].data,
                hdus["DQ"].data,
                version=version,
                calibration=image_calibration(spec.band),
                saturated_bits=QUALITY_SATURATED,
            )
        stored = shard[row["offset"]].astype(np.float32)
        np.testing.assert_allclose(stored[:2], from_file[:2], atol=2e-3, rtol=1e-3)
        np.testing.assert_array_equal(stored[2:], from_file[2:])
        assert row["star_count"] == catalog.star_count
        assert row["log_bright"] == pytest.approx(np.log10(1 + catalog.bright_star_count))
    if version == 2:
        assert shard[:, 2].astype(np.float64).sum() > 100  # point-like sources were found, and compared


def test_truth_catalog_gives_a_samples_labels_and_the_same_stars_without_galaxies(tmp_path) -> None:
    """The catalog alone reproduces the dataset's labels; dropping the galaxies keeps every star as it was."""
    shape = (300, 320)
    specs = plan_samples(4, task="classify", seed=9, balance="uniform", galaxies=True)
    samples = write_dataset(tmp_path / "set", specs, task="classify", balance="uniform", shape=shape)
    for spec, row in zip(specs, samples, strict=True):
        catalog = truth_catalog(spec, shape=shape)
        assert (catalog.star_count, catalog.density_class) == (row["star_count"], row["density_class"])
        assert catalog.counted_star_count == row["counted_star_count"] == spec.counted
        assert catalog.bright_star_count == row["bright_star_count"]
        assert np.count_nonzero(~catalog.is_star) == row["galaxy_count"] > 0
        stars_only = truth_catalog(replace(spec, galaxies=False), shape=shape)
        assert np.all(stars_only.is_star)
        np.testing.assert_array_equal(stars_only.mag, catalog.mag[catalog.is_star])


def test_dataset_loads_through_pytorch_with_memory_mapping(tmp_path) -> None:
    specs = plan_samples(4, task="classify", seed=3, balance="uniform")
    write_dataset(tmp_path / "set", specs, task="classify", balance="uniform", shape=(240, 250))
    dataset = SimulatedDataset(tmp_path / "set")
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    tensors, targets = next(iter(loader))
    assert tensors.shape == (2, 4, 224, 224) and tensors.dtype == torch.float32  # version 2 by default
    assert targets.dtype == torch.int64
    assert [int(t) for t in targets] == [density_class(spec.counted) for spec in specs[:2]]
    regression = SimulatedDataset(tmp_path / "set", target="log_bright", indices=np.array([3]))
    assert len(regression) == 1 and regression[0][1].dtype == torch.float32
    with pytest.raises(FileExistsError):
        write_dataset(tmp_path / "set", specs, task="classify", balance="uniform", shape=(240, 250))


def test_several_datasets_read_as_one_in_order_when_they_share_the_model_input(tmp_path) -> None:
    write_dataset(
        tmp_path / "a",
        plan_samples(3, task="classify", seed=3, balance="uniform"),
        task="classify",
        balance="uniform",
        shape=(240, 250),
    )
    write_dataset(
        tmp_path / "b", plan_samples(2, task="regress", seed=4), task="regress", balance="paper", shape=(240, 250)
    )
    first, second = SimulatedDataset(tmp_path / "a"), SimulatedDataset(tmp_path / "b", target="density_class")
    both = SimulatedDataset([tmp_path / "a", tmp_path / "b"], target="density_class")
    assert len(both) == 5 and both.tasks == ["classify", "regress"]
    for item, (tensor, target) in enumerate([*first, *second]):
        assert torch.equal(both[item][0], tensor) and int(both[item][1]) == int(target)
    assert list(both.subset(np.array([4, 0])).samples["dataset"][[4, 0]]) == [1, 0]
    # The recorded training data: one dataset keeps its samples.ecsv hash; the order of several counts.
    assert first.manifest_sha256() == file_sha256(tmp_path / "a" / SAMPLES_NAME)
    reversed_order = SimulatedDataset([tmp_path / "b", tmp_path / "a"], target="density_class")
    assert len({first.manifest_sha256(), both.manifest_sha256(), reversed_order.manifest_sha256()}) == 3

    with pytest.raises(ConfigurationError, match="mix the classify and regress tasks"):
        SimulatedDataset([tmp_path / "a", tmp_path / "b"])
    shutil.copytree(tmp_path / "b", tmp_path / "old")
    description = json.loads((tmp_path / "old" / DESCRIPTION_NAME).read_text())
    (tmp_path / "old" / DESCRIPTION_NAME).write_text(json.dumps({**description, "preprocessing_version": 0}))
    with pytest.raises(ConfigurationError, match="its preprocessing_version is 0, not 2"):
        SimulatedDataset([tmp_path / "a", tmp_path / "old"], target="density_class")
    with pytest.raises(ConfigurationError, match="does not exist"):
        SimulatedDataset([tmp_path / "a", tmp_path / "nowhere"])


def test_datasets_record_their_label_rule_and_never_mix_two(tmp_path) -> None:
    shape = (240, 250)
    write_dataset(
        tmp_path / "new", plan_samples(2, task="classify", seed=5), task="classify", balance="paper", shape=shape
    )
    paper = plan_samples(2, task="classify", seed=5, galaxies=False, rule="catalog-stars")
    samples = write_dataset(tmp_path / "paper", paper, task="classify", balance="paper", shape=shape)
    description = json.loads((tmp_path / "paper" / DESCRIPTION_NAME).read_text())
    assert description["label_rule"] == "catalog-stars" and not description["galaxies"]
    assert Table.read(tmp_path / "paper" / SAMPLES_NAME, format="ascii.ecsv").meta["label_rule"] == "catalog-stars"
    assert list(samples["counted_star_count"]) == list(samples["star_count"]) == [spec.counted for spec in paper]
    assert SimulatedDataset(tmp_path / "new").label_rule == "detectable-stars"
    with pytest.raises(ConfigurationError, match="count 'catalog-stars', not 'detectable-stars'"):
        SimulatedDataset([tmp_path / "new", tmp_path / "paper"])
    # a dataset written before label rules were recorded counted every catalogued star
    del description["label_rule"]
    (tmp_path / "paper" / DESCRIPTION_NAME).write_text(json.dumps(description))
    assert SimulatedDataset(tmp_path / "paper").label_rule == "catalog-stars"


def test_cli_lists_fields_and_simulates(tmp_path, run_cli) -> None:
    listed = run_cli("simulate", "exposures", "--out", str(tmp_path), "--list-fields")
    assert "galactic_centre" in listed.output and "fornax" in listed.output
    result = run_cli(
        "simulate",
        "exposures",
        "--out",
        str(tmp_path / "sim"),
        "--field",
        "sculptor",
        "--detectors",
        "8,9",
        "--shape",
        "320x300",
        "--seed",
        "4",
    )
    assert result.exit_code == 0, result.output
    assert "wrote 2 detector images of 1 exposures" in result.output
    bad = run_cli("simulate", "exposures", "--out", str(tmp_path / "x"), "--field", "andromeda")
    assert bad.exit_code == 1 and "andromeda" in bad.output
    slitless = run_cli("simulate", "exposures", "--out", str(tmp_path / "x"), "--detectors", "1,8", "--shape", "64x64")
    assert slitless.exit_code == 1 and "not imaging detectors: [1]" in slitless.output
    dataset = run_cli(
        "simulate",
        "dataset",
        "--out",
        str(tmp_path / "set"),
        "--n",
        "2",
        "--task",
        "classify",
        "--shape",
        "240x230",
        "--processes",
        "1",
    )
    assert dataset.exit_code == 0, dataset.output
    assert "wrote 2 samples" in dataset.output and "'detectable-stars' labels" in dataset.output
    assert "preprocessing version 2" in dataset.output
    assert json.loads((tmp_path / "set" / DESCRIPTION_NAME).read_text())["galaxies"]
    paper = run_cli(
        "simulate",
        "dataset",
        "--out",
        str(tmp_path / "paper"),
        "--n",
        "2",
        "--task",
        "classify",
        "--shape",
        "240x230",
        "--stars-only",
        "--label-rule",
        "catalog-stars",
        "--workers",  # the former name of --processes, still accepted
        "1",
    )
    assert paper.exit_code == 0, paper.output
    described = json.loads((tmp_path / "paper" / DESCRIPTION_NAME).read_text())
    assert (described["galaxies"], described["label_rule"]) == (False, "catalog-stars")
    manifest = Table.read(tmp_path / "sim" / "manifest.ecsv", format="ascii.ecsv")
    assert manifest.meta["label_rule"] == "detectable-stars"
    assert all(manifest["counted_star_count"] <= manifest["star_count"])
    mixed = run_cli(
        "simulate",
        "exposures",
        "--out",
        str(tmp_path / "sim"),
        "--field",
        "sculptor",
        "--detectors",
        "8",
        "--shape",
        "320x300",
        "--label-rule",
        "catalog-stars",
    )
    assert mixed.exit_code == 1 and "labels made under the 'detectable-stars' rule" in mixed.output


def test_truth_prints_each_simulated_image_beside_the_catalogs_answer(tmp_path, run_cli) -> None:
    simulated = run_cli(
        "simulate",
        "exposures",
        "--out",
        str(tmp_path / "sim"),
        "--field",
        "sculptor",
        "--detectors",
        "8,9",
        "--shape",
        "320x300",
        "--seed",
        "4",
    )
    assert simulated.exit_code == 0, simulated.output
    manifest = Table.read(tmp_path / "sim" / "manifest.ecsv", format="ascii.ecsv")
    before = run_cli("simulate", "truth", str(tmp_path / "sim"), "--format", "csv")
    assert before.exit_code == 0, before.output
    header, *lines = before.output.strip().splitlines()
    assert header == (
        "exposure_id,detector,band,field,true_class,counted_stars,true_bright,density_class,"
        "confidence,bright_count,flags"
    )
    assert len(lines) == 2 and all(line.endswith(",,,,") for line in lines)  # nothing ingested yet
    assert run_cli("-q", "ingest", str(tmp_path / "sim"), "--workers", "1").exit_code == 0
    after = run_cli("simulate", "truth", str(tmp_path / "sim"), "--format", "csv").output.strip().splitlines()[1:]
    for row in manifest:
        [line] = [line for line in after if line.startswith(f"{row['exposure_id']},{row['detector']},")]
        fields = line.split(",")
        assert fields[4:7] == [str(row["density_class"]), str(row["counted_star_count"]), str(row["bright_star_count"])]
        assert fields[7] in "012345" and "outside_training_domain" in line  # demo models, 320 x 300 cut-outs
    missing = run_cli("simulate", "truth", str(tmp_path))
    assert missing.exit_code == 1 and "not a `simulate exposures` directory" in missing.output


def test_full_size_detector_with_200k_stars_renders_in_under_2_gb() -> None:
    import subprocess
    import sys

    probe = """
import numpy as np
from astropy.wcs import WCS
from density_db.focal_plane import DETECTOR_SHAPE, detector_wcs_header
from density_db.simulate.catalog import draw_catalog
from density_db.simulate.fields import field_by_name
from density_db.simulate.render import render_detector
rng = np.random.default_rng(0)
wcs = WCS(detector_wcs_header(13, ra=265.1, dec=-28.35, shape=DETECTOR_SHAPE))
catalog = draw_catalog(wcs, DETECTOR_SHAPE, "i", rng, field=field_by_name("galactic_centre"),
                       counted=200_000, rule="catalog-stars", include_galaxies=False)
image = render_detector(catalog, DETECTOR_SHAPE, "i", rng)
peak_kib = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(catalog.star_count, image.science.shape, peak_kib)
"""
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert int(output[0]) == 200_000
    # VmHWM, the peak of the child's own memory: its ru_maxrss would include this test runner's peak
    assert int(output[-1]) * 1024 < 2 * 2**30


@pytest.mark.parametrize(
    "device",
    [
        "cpu",  # torch's CPU device runs the same code as CUDA
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
    ],
)
def test_torch_device_path_gives_the_numpy_path_dataset(tmp_path, device) -> None:
    """The --device path against NumPy, same seed."""
    specs = plan_samples(3, task="regress", seed=13)
    shape = (700, 720)
    numpy_set = write_dataset(tmp_path / "numpy", specs, task="regress", balance="paper", shape=shape)
    torch_set = write_dataset(tmp_path / "torch", specs, task="regress", balance="paper", shape=shape, device=device)
    np.testing.assert_array_equal(numpy_set["star_count"], torch_set["star_count"])
    np.testing.assert_allclose(
        np.load(tmp_path / "numpy" / "shard_00000.npy").astype(np.float32),
        np.load(tmp_path / "torch" / "shard_00000.npy").astype(np.float32),
        atol=2e-3,
        rtol=1e-3,
    )
