"""HEALPix density maps from frame footprints (``density_db.maps``).

Filled by the maps issue; the quick cone and point queries live in
:mod:`density_db.queries`.
"""
