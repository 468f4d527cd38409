"""Building a catalog by hand: frames from corners, exposures, models, runs and results, straight into the tables."""

from __future__ import annotations

import datetime
import uuid

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import Range

from density_db import sky
from density_db.database import Database
from density_db.tables import DensityResult, Exposure, Frame, Model, Run
from geometry import tangent_to_sky


def square_corners(ra: float, dec: float, half_deg: float, angle_rad: float = 0.0, aspect: float = 1.0):
    """Corners of a (rotated) rectangle of half-sides half_deg x half_deg*aspect around (ra, dec)."""
    offsets = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]]) * half_deg
    rotation = np.array([[np.cos(angle_rad), -np.sin(angle_rad)], [np.sin(angle_rad), np.cos(angle_rad)]])
    rotated = offsets @ rotation
    return tangent_to_sky(ra, dec, rotated[:, 0], rotated[:, 1])


def frame_row(
    corner_ra,
    corner_dec,
    *,
    band: str = "g",
    valid_fraction: float | None = None,
    centre: tuple[float, float] | None = None,
) -> dict:
    """A ``frame`` row from its corners; the centre is the corners' mean direction unless given."""
    corner_ra, corner_dec = np.asarray(corner_ra, dtype=float) % 360, np.asarray(corner_dec, dtype=float)
    if centre is None:
        mean = sky._unit_vectors(corner_ra, corner_dec).sum(axis=0)
        centre = (
            float(np.degrees(np.arctan2(mean[1], mean[0])) % 360),
            float(np.degrees(np.arcsin(mean[2] / np.linalg.norm(mean)))),
        )
    ra, dec = centre
    return {
        "detector": 1,
        "band": band,
        "path": "/archive/frame.fits",
        "hdu_index": 1,
        "naxis1": 64,
        "naxis2": 64,
        "valid_fraction": valid_fraction,
        "ra": ra,
        "dec": dec,
        "corner_ra": corner_ra.tolist(),
        "corner_dec": corner_dec.tolist(),
        "radius_deg": sky.circumradius_deg(ra, dec, corner_ra, corner_dec),
        "hpx": int(sky.hpx29(ra, dec)),
        "footprint": [Range(int(lo), int(hi), bounds="[)") for lo, hi in sky.footprint_ranges(corner_ra, corner_dec)],
        "footprint_depth": sky.FOOTPRINT_DEPTH,
    }


def insert_frames(database: Database, frames: list[dict]) -> list[int]:
    """Insert frames, one exposure per 30 (detectors 1-30); sets and returns their ids."""
    with database.engine.begin() as connection:
        for start in range(0, len(frames), 30):
            exposure_pk = connection.execute(
                sa.insert(Exposure)
                .values(
                    instrument="csst",
                    exposure_id=f"exp-{uuid.uuid4().hex[:8]}",
                    mjd=61000.0 + start,
                    obs_time=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
                )
                .returning(Exposure.id)
            ).scalar_one()
            batch = frames[start : start + 30]
            for detector, frame in enumerate(batch, start=1):
                frame["exposure_pk"], frame["detector"] = exposure_pk, detector
            rows = [{key: value for key, value in frame.items() if key != "id"} for frame in batch]
            ids = connection.execute(sa.insert(Frame).returning(Frame.id, sort_by_parameter_order=True), rows).scalars()
            for frame, frame_id in zip(batch, ids, strict=True):
                frame["id"] = frame_id
    return [frame["id"] for frame in frames]


def new_run(database: Database, tag: str) -> tuple[int, int, int]:
    """A classifier, a regressor and a run that used them: (classifier_id, regressor_id, run_id)."""
    with database.engine.begin() as connection:
        model_ids = [
            connection.execute(
                sa.insert(Model)
                .values(
                    name=f"{stage}-{tag}",
                    stage=stage,
                    architecture="resnet",
                    sha256=uuid.uuid4().hex * 2,
                )
                .returning(Model.id)
            ).scalar_one()
            for stage in ("classifier", "regressor")
        ]
        run_id = connection.execute(
            sa.insert(Run)
            .values(
                kind="ingest",
                status="completed",
                classifier_id=model_ids[0],
                regressor_id=model_ids[1],
                code_version="test",
                host="test",
                pid=1,
            )
            .returning(Run.id)
        ).scalar_one()
    return model_ids[0], model_ids[1], run_id


def insert_results(database: Database, run: tuple[int, int, int], results: dict[int, tuple[int, float | None]]) -> None:
    """Results of one run: frame id -> (density class, bright count or None)."""
    classifier_id, regressor_id, run_id = run
    rows = []
    for frame_id, (density_class, bright_count) in results.items():
        probabilities = [0.02] * 6
        probabilities[density_class] = 0.9
        rows.append(
            {
                "frame_id": frame_id,
                "classifier_id": classifier_id,
                "regressor_id": regressor_id,
                "run_id": run_id,
                "density_class": density_class,
                "probabilities": probabilities,
                "class_confidence": 0.9,
                "bright_count": bright_count,
                "log_bright": None if bright_count is None else float(np.log10(1 + bright_count)),
                "regression_status": {0: "empty", 5: "bypassed"}.get(density_class, "predicted"),
            }
        )
    with database.engine.begin() as connection:
        connection.execute(sa.insert(DensityResult), rows)
