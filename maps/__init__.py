"""HEALPix density maps from frame footprints (``density_db.maps``).

``source`` streams frames with their results from the catalog, ``rasterize``
turns WCS corner polygons into covered fractions of HEALPix pixels,
``aggregate`` accumulates the per-pixel statistics, ``writers`` and ``plots``
write healsparse, healpy FITS, MOC and PNG files, and ``build`` runs them in
order for ``density-db maps build``.  The quick cone and point queries live in
:mod:`density_db.queries`.
"""
