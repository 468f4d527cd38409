"""density-db: a catalog and database of stellar density for survey detector images.

Each detector image of an archive is characterised by the two-stage model of
Lai et al. (2026) -- a six-class density classifier followed by a gated
regressor of the number of stars brighter than 23.5 mag -- and one result per
image is stored in PostgreSQL, keyed by exposure, detector, band and sky
position, from which HEALPix maps and reprocessing campaigns are built.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("density-db")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
