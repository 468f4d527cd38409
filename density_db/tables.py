"""The catalog's tables as SQLAlchemy 2 typed ORM models.

Conventions: singular snake_case table names; surrogate ``id`` keys with the
natural keys as unique constraints (they make re-ingest idempotent through
``INSERT ... ON CONFLICT``); relationships are ``lazy="raise"`` so that no query
hides behind an attribute access.  Sky positions are degrees ICRS; ``hpx`` is
the order-29 NESTED HEALPix index of a frame's centre and ``footprint`` the
depth-29 ranges of the frame's MOC at ``footprint_depth`` (the healpix-alchemy
pattern, kept in one ``int8multirange`` per frame).

The schema itself is created by the Alembic revisions in ``migrations/``;
``tests/test_migrations.py`` checks that they match these models.
"""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, INT8MULTIRANGE, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

REGRESSION_STATUSES = ("predicted", "bypassed", "empty")
RUN_STATUSES = ("running", "completed", "failed", "interrupted")
CAMPAIGN_ITEM_STATUSES = ("pending", "done", "failed")
WHOLE_FILE = -1
"""``failure.hdu_index`` of a failure that concerns a file as a whole."""


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class Base(DeclarativeBase):
    """Declarative base with the naming convention Alembic needs for stable constraint names."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        int: sa.BigInteger(),
        float: sa.Double(),
        str: sa.Text(),
        datetime.datetime: sa.DateTime(timezone=True),
        dict[str, Any]: JSONB(),
    }


_now = sa.text("now()")


class Exposure(Base):
    """One exposure (pointing) of an instrument; its detectors are frames."""

    __tablename__ = "exposure"
    __table_args__ = (sa.UniqueConstraint("instrument", "exposure_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instrument: Mapped[str]
    exposure_id: Mapped[str] = mapped_column(
        comment="Exposure identifier as written in the FITS header (OBSID for CSST)"
    )
    mjd: Mapped[float] = mapped_column(comment="Modified Julian Date of the exposure start")
    obs_time: Mapped[datetime.datetime] = mapped_column(comment="Exposure start, UTC")
    exposure_time: Mapped[float | None] = mapped_column(comment="Seconds")
    pointing_ra: Mapped[float | None] = mapped_column(comment="Degrees, ICRS")
    pointing_dec: Mapped[float | None] = mapped_column(comment="Degrees, ICRS")
    registered_at: Mapped[datetime.datetime] = mapped_column(server_default=_now)

    frames: Mapped[list[Frame]] = relationship(back_populates="exposure", lazy="raise")


class Frame(Base):
    """One detector image: the unit that gets a density result."""

    __tablename__ = "frame"
    __table_args__ = (
        sa.UniqueConstraint("exposure_pk", "detector"),
        sa.Index("ix_frame_hpx", "hpx"),
        sa.Index("ix_frame_footprint", "footprint", postgresql_using="gist"),
        sa.Index("ix_frame_band", "band"),
        sa.Index("ix_frame_radius_deg", "radius_deg"),
        sa.CheckConstraint("footprint_depth BETWEEN 0 AND 29", name="footprint_depth"),
        sa.CheckConstraint("dec BETWEEN -90 AND 90", name="dec"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    exposure_pk: Mapped[int] = mapped_column(sa.ForeignKey("exposure.id", ondelete="CASCADE"))
    detector: Mapped[int] = mapped_column(sa.SmallInteger)
    band: Mapped[str] = mapped_column(comment="Canonical band name of the instrument profile")
    path: Mapped[str] = mapped_column(comment="Absolute path of the FITS file")
    hdu_index: Mapped[int] = mapped_column(sa.SmallInteger, comment="Index of the science HDU in the file")
    dq_hdu_index: Mapped[int | None] = mapped_column(sa.SmallInteger, comment="Index of the matching data-quality HDU")
    naxis1: Mapped[int] = mapped_column(sa.Integer, comment="Image width in pixels")
    naxis2: Mapped[int] = mapped_column(sa.Integer, comment="Image height in pixels")
    valid_fraction: Mapped[float | None] = mapped_column(sa.REAL, comment="Fraction of finite, unflagged pixels")
    ra: Mapped[float] = mapped_column(comment="Centre, degrees ICRS")
    dec: Mapped[float] = mapped_column(comment="Centre, degrees ICRS")
    corner_ra: Mapped[list[float]] = mapped_column(
        ARRAY(sa.Double, dimensions=1), comment="Outer pixel corners, degrees"
    )
    corner_dec: Mapped[list[float]] = mapped_column(
        ARRAY(sa.Double, dimensions=1), comment="Outer pixel corners, degrees"
    )
    radius_deg: Mapped[float] = mapped_column(comment="Largest centre-to-corner separation, degrees")
    hpx: Mapped[int] = mapped_column(comment="Order-29 NESTED HEALPix index of the centre")
    footprint: Mapped[Any] = mapped_column(
        INT8MULTIRANGE, comment="Depth-29 NESTED ranges of the footprint MOC at footprint_depth"
    )
    footprint_depth: Mapped[int] = mapped_column(sa.SmallInteger)
    run_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("run.id", ondelete="SET NULL"), comment="Run that registered it"
    )
    registered_at: Mapped[datetime.datetime] = mapped_column(server_default=_now)

    exposure: Mapped[Exposure] = relationship(back_populates="frames", lazy="raise")


class Model(Base):
    """A trained network (classifier or regressor), identified by the sha256 of its checkpoint."""

    __tablename__ = "model"
    __table_args__ = (
        sa.UniqueConstraint("sha256"),
        sa.UniqueConstraint("name"),
        sa.CheckConstraint(_in("stage", ("classifier", "regressor")), name="stage"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    stage: Mapped[str]
    architecture: Mapped[str]
    sha256: Mapped[str]
    path: Mapped[str | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata",
        server_default=sa.text("'{}'::jsonb"),
        comment="Class edges, magnitude limit, input size, preprocessing version, training summary",
    )
    created_at: Mapped[datetime.datetime] = mapped_column(server_default=_now)


class Run(Base):
    """One ingest, registration or planning run, with its configuration and outcome."""

    __tablename__ = "run"
    __table_args__ = (sa.CheckConstraint(_in("status", RUN_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(comment="register, ingest, flags or plan")
    name: Mapped[str | None]
    status: Mapped[str] = mapped_column(server_default="running")
    classifier_id: Mapped[int | None] = mapped_column(sa.ForeignKey("model.id"))
    regressor_id: Mapped[int | None] = mapped_column(sa.ForeignKey("model.id"))
    config: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"))
    code_version: Mapped[str]
    host: Mapped[str]
    pid: Mapped[int] = mapped_column(sa.Integer)
    started_at: Mapped[datetime.datetime] = mapped_column(server_default=_now)
    finished_at: Mapped[datetime.datetime | None]
    counts: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"))
    message: Mapped[str | None] = mapped_column(comment="Why the run failed or was interrupted")


class DensityResult(Base):
    """The two-stage model's answer for one frame and one (classifier, regressor) pair."""

    __tablename__ = "density_result"
    __table_args__ = (
        sa.UniqueConstraint("frame_id", "classifier_id", "regressor_id"),
        sa.Index("ix_density_result_run_id", "run_id"),
        sa.CheckConstraint("density_class BETWEEN 0 AND 5", name="density_class"),
        sa.CheckConstraint(_in("regression_status", REGRESSION_STATUSES), name="regression_status"),
        sa.CheckConstraint("cardinality(probabilities) = 6", name="probabilities"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    frame_id: Mapped[int] = mapped_column(sa.ForeignKey("frame.id", ondelete="CASCADE"))
    classifier_id: Mapped[int] = mapped_column(sa.ForeignKey("model.id"))
    regressor_id: Mapped[int] = mapped_column(sa.ForeignKey("model.id"))
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("run.id"))
    density_class: Mapped[int] = mapped_column(sa.SmallInteger)
    probabilities: Mapped[list[float]] = mapped_column(ARRAY(sa.REAL, dimensions=1), comment="P(class 0..5)")
    class_confidence: Mapped[float] = mapped_column(sa.REAL, comment="Probability of the predicted class")
    log_bright: Mapped[float | None] = mapped_column(sa.REAL, comment="Predicted log10(1 + N_bright)")
    bright_count: Mapped[float | None] = mapped_column(sa.REAL, comment="Predicted stars brighter than 23.5 mag")
    regression_status: Mapped[str] = mapped_column(comment="predicted, bypassed (class 5) or empty (class 0)")
    flags: Mapped[int] = mapped_column(server_default="0", comment="Bitmask of field flags (flag_names() names them)")
    flags_run_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("run.id", ondelete="SET NULL"), comment="Run whose rules set the flags (run.config holds them)"
    )
    read_seconds: Mapped[float | None] = mapped_column(sa.REAL)
    preprocess_seconds: Mapped[float | None] = mapped_column(sa.REAL)
    infer_seconds: Mapped[float | None] = mapped_column(sa.REAL)
    created_at: Mapped[datetime.datetime] = mapped_column(server_default=_now)

    frame: Mapped[Frame] = relationship(lazy="raise")


class Failure(Base):
    """An input that could not be registered or processed, with a message a person can act on.

    One row per (path, HDU, stage, error kind): seeing the same failure again
    raises ``attempts`` and ``last_seen_at`` instead of adding a row.
    """

    __tablename__ = "failure"
    __table_args__ = (sa.UniqueConstraint("path", "hdu_index", "stage", "error_kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str]
    hdu_index: Mapped[int] = mapped_column(
        sa.SmallInteger, server_default=str(WHOLE_FILE), comment="-1: the file as a whole"
    )
    stage: Mapped[str] = mapped_column(comment="register or inference")
    error_kind: Mapped[str] = mapped_column(comment="not_fits, truncated, no_wcs, missing_keyword, ...")
    message: Mapped[str]
    frame_id: Mapped[int | None] = mapped_column(sa.ForeignKey("frame.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("run.id", ondelete="SET NULL"), comment="Last run that saw it"
    )
    attempts: Mapped[int] = mapped_column(sa.Integer, server_default="1")
    first_seen_at: Mapped[datetime.datetime] = mapped_column(server_default=_now)
    last_seen_at: Mapped[datetime.datetime] = mapped_column(server_default=_now)


class Campaign(Base):
    """A reprocessing plan: which processing branch each selected frame goes to."""

    __tablename__ = "campaign"
    __table_args__ = (sa.UniqueConstraint("name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    description: Mapped[str | None]
    rules: Mapped[dict[str, Any]] = mapped_column(comment="The routing rules the plan was made with")
    selection: Mapped[dict[str, Any]] = mapped_column(
        server_default=sa.text("'{}'::jsonb"), comment="Bands, region and result run the frames were selected by"
    )
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("run.id", ondelete="SET NULL"))
    created_at: Mapped[datetime.datetime] = mapped_column(server_default=_now)


class CampaignItem(Base):
    """One frame of a campaign, its branch and its processing status.

    The item's references have no per-row foreign keys: a campaign inserts
    millions of items in one statement, and row-by-row key checks (which also
    lock each referenced row) took two thirds of the time at 2 million frames.
    Items are only ever made from existing frames and results, and statement
    triggers (``views.CAMPAIGN_ITEM_TRIGGERS``) keep the ``ON DELETE``
    behaviour: deleting a campaign or a frame deletes its items, deleting a
    result clears ``result_id``.
    """

    __tablename__ = "campaign_item"
    __table_args__ = (
        sa.CheckConstraint(_in("status", CAMPAIGN_ITEM_STATUSES), name="status"),
        sa.Index("ix_campaign_item_campaign_id_branch", "campaign_id", "branch"),
        sa.Index("ix_campaign_item_frame_id", "frame_id"),
    )

    campaign_id: Mapped[int] = mapped_column(primary_key=True, comment="campaign.id")
    frame_id: Mapped[int] = mapped_column(primary_key=True, comment="frame.id")
    result_id: Mapped[int | None] = mapped_column(comment="density_result.id the frame was routed by")
    branch: Mapped[str]
    status: Mapped[str] = mapped_column(server_default="pending")
    updated_at: Mapped[datetime.datetime] = mapped_column(server_default=_now)
