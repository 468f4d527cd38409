"""Reading frame metadata from FITS headers, finding input files, instrument profiles."""

import datetime
import gzip
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from density_db import sky
from density_db.errors import ConfigurationError, InputError
from density_db.fits_input import FrameHeader, InputFailure, discover_inputs, read_frame_headers
from density_db.inference.point_sources import Calibration
from density_db.instrument import BandCalibration, load_profile
from fits_factory import FrameSpec, csst_keywords, image_hdu, truncate, wcs_header, write_mef, write_single

CSST = load_profile("csst")


def three_detectors(**spec: object) -> list[FrameSpec]:
    """Three frames of one exposure: detectors 8 (g), 9 (r) and 12 (NUV)."""
    return [
        FrameSpec(ra=150.0 + 0.2 * n, keywords=csst_keywords(chipid=chip, band=band), **spec)
        for n, (chip, band) in enumerate([(8, "g"), (9, "r"), (12, "NUV")])
    ]


def only_frames(entries: list[FrameHeader | InputFailure]) -> list[FrameHeader]:
    failures = [entry for entry in entries if isinstance(entry, InputFailure)]
    assert not failures, failures
    return entries  # type: ignore[return-value]


def test_single_hdu_frame_reads_every_field(tmp_path):
    spec = FrameSpec(ra=150.0, dec=2.0, rotation_deg=30.0, keywords=csst_keywords(RA_OBJ=150.05, DEC_PNT0=2.1))
    path = write_single(tmp_path / "frame.fits", spec)

    [frame] = only_frames(read_frame_headers(str(path), CSST))

    assert frame.path == str(path.absolute())
    assert (frame.hdu_index, frame.dq_hdu_index) == (0, None)
    assert (frame.instrument, frame.exposure_id, frame.detector, frame.band) == ("csst", "10100000001", 8, "g")
    assert frame.obs_time == datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)
    assert frame.mjd == pytest.approx(Time("2026-03-01T12:00:00", scale="utc").mjd, abs=1e-9)
    assert frame.exposure_time == 150.0
    # RA_PNT0 is absent, so its alternative RA_OBJ is used.
    assert (frame.pointing_ra, frame.pointing_dec) == (150.05, 2.1)
    assert frame.shape == (64, 64)
    assert frame.valid_fraction is None
    assert frame.radius_deg == pytest.approx(0.19 / np.sqrt(2), rel=1e-3)
    assert frame.hpx == sky.hpx29(frame.centre_ra, frame.centre_dec)
    assert frame.footprint_depth == sky.FOOTPRINT_DEPTH
    np.testing.assert_array_equal(
        np.array(frame.footprint), sky.footprint_ranges(frame.corner_ra, frame.corner_dec, depth=sky.FOOTPRINT_DEPTH)
    )


@pytest.mark.parametrize(
    ("ra", "dec", "rotation_deg"),
    [(150.0, 2.0, 0.0), (0.02, -10.0, 30.0), (359.99, 45.0, 90.0), (45.0, 89.5, 10.0), (270.0, -89.3, 200.0)],
)
def test_centre_and_corners_agree_with_astropy(tmp_path, ra, dec, rotation_deg):
    spec = FrameSpec(ra=ra, dec=dec, rotation_deg=rotation_deg)
    [frame] = only_frames(read_frame_headers(write_single(tmp_path / "frame.fits", spec), CSST))

    wcs = WCS(wcs_header(ra, dec, rotation_deg=rotation_deg))
    x, y = [31.5, -0.5, 63.5, 63.5, -0.5], [31.5, -0.5, -0.5, 63.5, 63.5]
    expected_ra, expected_dec = wcs.all_pix2world(x, y, 0)
    separation = sky.angular_separation_deg(
        [frame.centre_ra, *frame.corner_ra], [frame.centre_dec, *frame.corner_dec], expected_ra, expected_dec
    )
    assert np.max(separation) < 1e-6
    assert all(0 <= value < 360 for value in (frame.centre_ra, *frame.corner_ra))


@pytest.mark.parametrize(
    ("name", "compressed"),
    [("exposure.fits", False), ("exposure.fit", False), ("exposure.fits.gz", False), ("exposure.fits.fz", True)],
)
def test_multi_extension_files_give_one_frame_per_science_hdu(tmp_path, name, compressed):
    path = write_mef(tmp_path / name, three_detectors(), compressed=compressed)

    frames = only_frames(read_frame_headers(path, CSST))

    assert [(f.hdu_index, f.detector, f.band) for f in frames] == [(1, 8, "g"), (2, 9, "r"), (3, 12, "NUV")]
    assert all(f.shape == (64, 64) and f.exposure_id == "10100000001" for f in frames)
    assert [round(f.centre_ra, 6) for f in frames] == pytest.approx([150.0, 150.2, 150.4], abs=1e-6)


def test_file_names_are_never_trusted(tmp_path):
    gzipped = write_mef(tmp_path / "exposure.fits.gz", three_detectors())
    disguised = gzipped.rename(tmp_path / "exposure.dat")

    assert len(only_frames(read_frame_headers(disguised, CSST))) == 3


@pytest.mark.parametrize("dq_extname", ["DQ", "FLG"])
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("dq", ["extver", "chipid"])
def test_data_quality_hdus_match_their_science_hdu(tmp_path, dq, compressed, dq_extname):
    path = write_mef(tmp_path / "exposure.fits", three_detectors(), dq=dq, dq_extname=dq_extname, compressed=compressed)

    frames = only_frames(read_frame_headers(path, CSST))

    # Data-quality HDUs 4, 5, 6 hold detectors 12, 9, 8 (reverse order).
    assert [(f.hdu_index, f.dq_hdu_index) for f in frames] == [(1, 6), (2, 5), (3, 4)]


def test_single_science_and_quality_pair_match_without_extver_or_chipid(tmp_path):
    rng = np.random.default_rng(1)
    spec = FrameSpec()
    mask = FrameSpec(keywords={}, wcs=False)
    hdus = [
        fits.PrimaryHDU(),
        image_hdu(spec, rng, extname="SCI"),
        image_hdu(mask, rng, extname="DQ", data=np.zeros(spec.shape, np.int16)),
    ]
    fits.HDUList(hdus).writeto(tmp_path / "frame.fits")

    [frame] = only_frames(read_frame_headers(tmp_path / "frame.fits", CSST))

    assert frame.dq_hdu_index == 2


def test_keywords_fall_back_to_the_primary_header(tmp_path):
    specs = [FrameSpec(keywords={"CHIPID": chip, "FILTER": "G"}) for chip in (8, 23)]
    specs[1].keywords.pop("FILTER")
    primary = csst_keywords(obsid=20200000042, chipid=None, band="r", RA_PNT0=150.5, DEC_PNT0=2.5)
    path = write_mef(tmp_path / "exposure.fits", specs, primary_keywords=primary)

    frames = only_frames(read_frame_headers(path, CSST))

    assert [(f.exposure_id, f.detector, f.exposure_time, f.pointing_ra) for f in frames] == [
        ("20200000042", 8, 150.0, 150.5),
        ("20200000042", 23, 150.0, 150.5),
    ]
    # The image header wins over the primary header.
    assert [f.band for f in frames] == ["g", "r"]


@pytest.mark.parametrize(
    ("keywords", "field", "expected"),
    [
        ({"band": "nuv"}, "band", "NUV"),
        ({"band": "N"}, "band", "NUV"),
        ({"band": " Z "}, "band", "z"),
        ({"chipid": "06"}, "detector", 6),
        ({"chipid": 25}, "detector", 25),
        ({"obsid": 10100000001}, "exposure_id", "10100000001"),
        ({"obsid": " 1010X "}, "exposure_id", "1010X"),
        ({"exptime": None}, "exposure_time", None),
        ({"exptime": "long"}, "exposure_time", None),
        ({"date_obs": "2026-03-01T12:00:00Z"}, "mjd", 61100.5),
        ({"date_obs": "2026-03-01"}, "mjd", 61100.0),
        ({"date_obs": None, "MJD-OBS": 61100.25}, "mjd", 61100.25),
    ],
)
def test_keyword_spellings_are_understood(tmp_path, keywords, field, expected):
    path = write_single(tmp_path / "frame.fits", FrameSpec(keywords=csst_keywords(**keywords)))

    [frame] = only_frames(read_frame_headers(path, CSST))

    assert getattr(frame, field) == expected


def test_band_mismatch_with_the_focal_plane_map_is_not_an_error(tmp_path):
    # Detector 8 carries the g filter on CSST; the band keyword still wins.
    path = write_single(tmp_path / "frame.fits", FrameSpec(keywords=csst_keywords(chipid=8, band="y")))

    [frame] = only_frames(read_frame_headers(path, CSST))

    assert (frame.detector, frame.band) == (8, "y")


def test_mjd_fallback_gives_utc_time(tmp_path):
    spec = FrameSpec(keywords=csst_keywords(date_obs=None, **{"MJD-OBS": 61100.5}))
    path = write_single(tmp_path / "frame.fits", spec)

    [frame] = only_frames(read_frame_headers(path, CSST))

    assert frame.obs_time == datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)


def test_without_extnames_every_2d_float_image_is_science(tmp_path):
    rng = np.random.default_rng(2)
    hdus = [
        image_hdu(FrameSpec(keywords=csst_keywords(chipid=8)), rng, primary=True),
        image_hdu(FrameSpec(keywords=csst_keywords(chipid=9, band="r")), rng),
        image_hdu(FrameSpec(keywords={}, wcs=False), rng, data=np.zeros((64, 64), np.int16)),
        image_hdu(FrameSpec(keywords=csst_keywords(chipid=14, band="u")), rng, compressed=True),
    ]
    fits.HDUList(hdus).writeto(tmp_path / "frames.fits")

    frames = only_frames(read_frame_headers(tmp_path / "frames.fits", CSST))

    assert [(f.hdu_index, f.detector) for f in frames] == [(0, 8), (1, 9), (3, 14)]


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def cut_in_header(path: Path, hdu_index: int) -> Path:
    with fits.open(path) as hdus:
        header_start = hdus[hdu_index].fileinfo()["hdrLoc"]
    return truncate(path, header_start + 500)


FILE_FAILURES = {
    "missing": ("not_found", lambda p: p),
    "text": ("not_fits", lambda p: written(p, b"ra,dec\n1,2\n")),
    "empty": ("not_fits", lambda p: written(p, b"")),
    "gzipped text": ("not_fits", lambda p: written(p, gzip.compress(b"hello"))),
    "directory": ("unreadable", lambda p: p.mkdir() or p),
    "no END card": ("unreadable", lambda p: written(p, b"SIMPLE  =                    T".ljust(80) + b"\xff" * 2800)),
    "cut in primary header": ("truncated", lambda p: truncate(write_mef(p, three_detectors()), 1000)),
    "cut in extension header": ("truncated", lambda p: cut_in_header(write_mef(p, three_detectors()), 2)),
    "cut in data": ("truncated", lambda p: truncate(write_mef(p, three_detectors()), -3000)),
    "padding missing": ("truncated", lambda p: truncate(write_mef(p, three_detectors()), -100)),
    "cut tile-compressed": ("truncated", lambda p: truncate(write_mef(p, three_detectors(), compressed=True), -3000)),
    "no science HDU": ("no_science_hdu", lambda p: write_mef(p, three_detectors(), extname="IMAGE")),
    "no image at all": ("no_science_hdu", lambda p: fits.PrimaryHDU().writeto(p) or p),
}


@pytest.mark.parametrize("case", list(FILE_FAILURES))
def test_unusable_files_become_one_failure(tmp_path, case):
    kind, make = FILE_FAILURES[case]
    path = make(tmp_path / "input.fits")

    [failure] = read_frame_headers(path, CSST)

    assert failure == InputFailure(str(path), -1, kind, failure.message)
    assert str(path) in failure.message


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9, 0.99])
def test_truncated_gzip_files_are_detected(tmp_path, fraction):
    path = write_mef(tmp_path / "exposure.fits.gz", three_detectors())
    truncate(path, int(path.stat().st_size * fraction))

    [failure] = read_frame_headers(path, CSST)

    assert failure.error_kind == "truncated"


HDU_FAILURES = {
    "3-D science HDU": ("not_2d", FrameSpec(shape=(2, 64, 64)), "NAXIS = 3"),
    "no WCS": ("no_wcs", FrameSpec(wcs=False), "no celestial WCS"),
    "no band": ("missing_keyword", FrameSpec(keywords=csst_keywords(band="")), "FILTER"),
    "no time": ("missing_keyword", FrameSpec(keywords=csst_keywords(date_obs=None)), "DATE-OBS or MJD-OBS"),
    "no exposure": ("missing_keyword", FrameSpec(keywords=csst_keywords(obsid=None)), "OBSID"),
    "bad date": ("bad_keyword", FrameSpec(keywords=csst_keywords(date_obs="yesterday")), "'yesterday'"),
    "bad MJD": ("bad_keyword", FrameSpec(keywords=csst_keywords(date_obs=None, **{"MJD-OBS": "soon"})), "'soon'"),
    "bad detector": ("bad_keyword", FrameSpec(keywords=csst_keywords(chipid="A1")), "CHIPID = 'A1'"),
    "float exposure id": ("bad_keyword", FrameSpec(keywords=csst_keywords(obsid=1.5)), "OBSID = 1.5"),
    "unknown band": ("unknown_band", FrameSpec(keywords=csst_keywords(band="Q")), "'Q'"),
}


@pytest.mark.parametrize("case", list(HDU_FAILURES))
def test_unusable_hdus_become_failures_naming_hdu_and_keyword(tmp_path, case):
    kind, bad, wording = HDU_FAILURES[case]
    specs = three_detectors()
    specs[1] = bad
    path = write_mef(tmp_path / "exposure.fits", specs)

    entries = read_frame_headers(path, CSST)

    assert [type(entry) for entry in entries] == [FrameHeader, InputFailure, FrameHeader]
    failure = entries[1]
    assert (failure.path, failure.hdu_index, failure.error_kind) == (str(path), 2, kind)
    assert f"{path} HDU 2" in failure.message and wording in failure.message


def test_unknown_band_message_lists_the_accepted_bands(tmp_path):
    path = write_single(tmp_path / "frame.fits", FrameSpec(keywords=csst_keywords(band="Halpha")))

    [failure] = read_frame_headers(path, CSST)

    assert failure.error_kind == "unknown_band"
    assert "'Halpha'" in failure.message and "NUV (NUV, N), u, g, r, i, z, y" in failure.message


def test_wcs_that_cannot_be_evaluated_is_no_wcs(tmp_path):
    spec = FrameSpec(keywords=csst_keywords(CTYPE1="RA---XYZ", CTYPE2="DEC--XYZ"))
    path = write_single(tmp_path / "frame.fits", spec)

    [failure] = read_frame_headers(path, CSST)

    assert (failure.hdu_index, failure.error_kind) == (0, "no_wcs")


# ---------------------------------------------------------------- discover_inputs


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_directories_are_searched_recursively_in_sorted_order(tmp_path):
    for name in ["b/2.fits.fz", "b/1.FITS", "a/x.fit.gz", "a/notes.txt", "c.fts", "a/deeper/y.fits.gz", "z.csv"]:
        touch(tmp_path / "archive" / name)

    found = discover_inputs([tmp_path / "archive"])

    assert iter(found) is found  # a generator: paths stream
    assert [path.relative_to(tmp_path / "archive").as_posix() for path in found] == [
        "c.fts",
        "a/x.fit.gz",
        "a/deeper/y.fits.gz",
        "b/1.FITS",
        "b/2.fits.fz",
    ]


def test_globs_list_files_and_missing_paths_are_kept(tmp_path):
    for name in ["night1/a.fits", "night1/b.fits", "night2/c.fits", "night2/d.txt"]:
        touch(tmp_path / name)

    found = list(discover_inputs([f"{tmp_path}/**/*.fits", str(tmp_path / "gone.fits")]))

    assert sorted(path.name for path in found[:3]) == ["a.fits", "b.fits", "c.fits"]
    assert found[3] == tmp_path / "gone.fits"
    [failure] = read_frame_headers(found[3], CSST)
    assert failure.error_kind == "not_found"


def test_list_files_skip_comments_and_each_file_comes_once(tmp_path, monkeypatch):
    first = touch(tmp_path / "data" / "a.fits")
    touch(tmp_path / "data" / "b.fits")
    (tmp_path / "link.fits").symlink_to(first)
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# tonight\n\n{first}\n{tmp_path / 'link.fits'}\n  {tmp_path / 'data'}  \n")

    found = list(discover_inputs([str(first)], from_file=listing))

    assert found == [first, tmp_path / "data" / "b.fits"]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{first}\n#{tmp_path}\n"))
    assert list(discover_inputs([], from_file="-")) == [first]


def test_unreadable_list_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="missing.txt"):
        list(discover_inputs([], from_file=tmp_path / "missing.txt"))


# ---------------------------------------------------------------- instrument profiles


def test_csst_profile_bands_and_detectors():
    assert CSST.bands == ("NUV", "u", "g", "r", "i", "z", "y")
    assert [CSST.canonical_band(value) for value in ["nuv", "NUV", "N", "n", "U", "g ", "Y"]] == [
        "NUV", "NUV", "NUV", "NUV", "u", "g", "y",
    ]  # fmt: skip
    assert len(CSST.detector_bands) == 18
    assert sorted(CSST.detector_bands.items())[:3] == [(6, "y"), (7, "i"), (8, "g")]
    assert [CSST.detector_bands[chip] for chip in (12, 13, 18, 19)] == ["NUV"] * 4
    with pytest.raises(InputError, match="'Q'.*accepted") as error:
        CSST.canonical_band("Q")
    assert error.value.kind == "unknown_band"


def test_profile_from_a_users_file(tmp_path):
    text = Path(CSST.source).read_text()
    text = text.replace('name = "csst"', 'name = "wfst"').replace('band = "FILTER"', 'band = "BAND"')
    path = tmp_path / "wfst.toml"
    path.write_text(text)

    profile = load_profile(path)

    assert (profile.name, profile.band_keyword, profile.source) == ("wfst", "BAND", str(path))
    assert load_profile(str(path)) == profile


@pytest.mark.parametrize(
    ("edit", "wording"),
    [
        (("[hdus]", "[hdus]\nextra = 1"), "unknown key 'extra' in [hdus]"),
        (('exposure_id = "OBSID"\n', ""), "missing key 'exposure_id' in [keywords]"),
        (('science = ["SCI"]', 'science = "SCI"'), "key 'science' in [hdus] must be a list of non-empty strings"),
        (('name = "csst"', "name = 3"), "key 'name' in the top level must be a non-empty string"),
        (('u = ["u"]', 'u = ["u", "N"]'), "spelling 'n' in [bands] belongs to both 'NUV' and 'u'"),
        (('6 = "y"', '6 = "Y"'), "detector 6 in [detectors] has band 'Y'"),
        (('6 = "y"', 'six = "y"'), "detector 'six' in [detectors] must be an integer"),
        (("[keywords]", "[keywords"), "is not valid TOML"),
        (("NUV = { zero_point", "Q = { zero_point"), "band 'Q' in [calibration.bands] is not a canonical band"),
        (("psf_fwhm = 2.4 }", "fwhm = 2.4 }"), "unknown key 'fwhm' in [calibration.bands] NUV"),
        (("saturated_bits = 1 ", "saturated_bits = -1 "), "saturated_bits in [calibration] must be a bit mask"),
        (("moffat_beta = 3.0", 'moffat_beta = "3"'), "key 'moffat_beta' in [calibration] must be a number"),
    ],
)
def test_profile_errors_name_the_file_and_the_field(tmp_path, edit, wording):
    old, new = edit
    text = Path(CSST.source).read_text()
    assert old in text
    path = tmp_path / "broken.toml"
    path.write_text(text.replace(old, new, 1))

    with pytest.raises(ConfigurationError) as error:
        load_profile(path)

    assert str(path) in str(error.value) and wording in str(error.value)


def test_a_frames_calibration_comes_from_its_header_else_its_bands_profile_values(tmp_path):
    """The keywords win; the band's values fill in; what is missing is named, and where it could come from."""
    from density_db.inference.calibration import frame_calibration

    keyed = csst_keywords(band="r", MAGZERO=25.5, PSF_FWHM=2.6)
    [header] = read_frame_headers(write_single(tmp_path / "keyed.fits", FrameSpec(keywords=keyed)), CSST)
    assert (header.zero_point, header.psf_fwhm_px) == (25.5, 2.6)
    pixels = np.zeros((64, 64), np.float32)
    assert frame_calibration(header, CSST.calibration).for_pixels(pixels, None) == Calibration(25.5, 150.0, 2.6, 3.0)
    [plain] = read_frame_headers(
        write_single(tmp_path / "plain.fits", FrameSpec(keywords=csst_keywords(band="i"))), CSST
    )
    assert frame_calibration(plain, CSST.calibration).for_pixels(pixels, None) == Calibration(25.574, 150.0, 1.9, 3.0)
    bare = replace(CSST.calibration, band_values={})
    [untimed] = read_frame_headers(
        write_single(tmp_path / "untimed.fits", FrameSpec(keywords=csst_keywords(exptime=None))), CSST
    )
    with pytest.raises(
        InputError,
        match=r"needs a zero point \(MAGZERO or \[calibration.bands\] g\) and an "
        r"exposure time",
    ) as error:
        frame_calibration(untimed, bare)
    assert error.value.kind == "no_calibration"
    # no FWHM anywhere: measured on the pixels, and blank pixels have no star to measure it on
    unmeasured = frame_calibration(plain, replace(CSST.calibration, band_values={"i": BandCalibration(25.0)}))
    assert unmeasured.fwhm_px is None
    with pytest.raises(InputError, match="no PSF FWHM in the header or the profile, and too few bright"):
        unmeasured.for_pixels(pixels, None)


def test_unknown_profile_names_list_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigurationError, match="'hst'.*shipped profiles: csst"):
        load_profile("hst")
    with pytest.raises(ConfigurationError, match="missing.toml"):
        load_profile(tmp_path / "missing.toml")
