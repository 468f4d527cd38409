"""Preprocessing, network architectures, checkpoints, the two-stage predictor,
training, evaluation and the Dask runner (``density_db.inference``).
"""
