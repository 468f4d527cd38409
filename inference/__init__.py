"""Preprocessing, network architectures, checkpoints, the two-stage predictor,
training, evaluation and the ingest engine (``density_db.inference``).

The ingest entry point is importable from here::

    from density_db.inference import IngestOptions, ModelPair, ingest

    models = ModelPair.resolve(database)  # the shipped demo models
    outcome = ingest(database, paths, models=models, options=IngestOptions(run_name="night 1"))

Those three names load on first use, so that importing a submodule (as
every Dask worker does) does not pull in the driver's dependencies.
"""

from __future__ import annotations

from importlib import import_module

_ENTRY_POINTS = {
    "ingest": "density_db.inference.driver",
    "IngestOptions": "density_db.inference.driver",
    "IngestOutcome": "density_db.inference.driver",
    "ModelPair": "density_db.inference.model_registry",
}

__all__ = sorted(_ENTRY_POINTS)


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        return getattr(import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
