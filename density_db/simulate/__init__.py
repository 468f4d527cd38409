"""CSST-like detector image simulation: instrument numbers, star fields, truth catalogs and rendering.

``photometry`` holds the instrument numbers (zero points, sky, PSF, noise),
``fields`` says how many stars and galaxies lie where and how bright they
are, ``catalog`` draws a detector's truth catalog (and its labels), and
``render`` turns a catalog into a calibrated float32 image with noise,
saturation and detector defects.
"""
