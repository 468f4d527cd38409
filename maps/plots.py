"""Map previews as PNG: a Mollweide view with a title and a labelled colour bar.

When the mapped footprint is small (a field, not a survey), a gnomonic panel
zoomed on it sits beside the all-sky view.  Each figure is drawn on its own
``Figure`` with the Agg canvas (never pyplot's global state), so it works
without a display; healpy's projectors turn the NESTED map into images.
"""

from __future__ import annotations

from pathlib import Path

import healpy
import numpy as np

from density_db.labels import N_CLASSES
from density_db.maps.aggregate import Statistic
from density_db.maps.writers import MapProvenance, full_sky

ZOOM_RADIUS_DEG = 30.0
"""A footprint within this radius of its centre gets a zoomed panel."""

MOLLWEIDE_WIDTH = 1200
"""Pixels across the Mollweide image."""

ZOOM_WIDTH = 600
DPI = 120


def plot_map(
    path: Path, statistic: Statistic, pixels: np.ndarray, values: np.ndarray, provenance: MapProvenance
) -> Path:
    """Draw one statistic (one of several fields: a panel per field) and save it as PNG.

    Parameters
    ----------
    path : pathlib.Path
        The PNG to write.
    statistic : Statistic
        What is drawn (title, unit, colour scale).
    pixels, values : numpy.ndarray
        Covered NESTED pixels and their values (``(m, k)`` for ``k`` fields).
    provenance : MapProvenance
        Band, nside and run, for the title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nside = provenance.nside
    panels = (
        [(name, values[:, index]) for index, name in enumerate(statistic.fields)]
        if statistic.fields
        else [("", values)]
    )
    zoom = _zoom_window(nside, pixels)
    columns = 2 if zoom is not None else 1
    figure = Figure(figsize=(7.5 * columns, 4.6 * len(panels)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    title = f"{statistic.name} - band {provenance.band}, nside {nside}, results: {provenance.run}"
    figure.suptitle(f"{title}\n{statistic.description}", fontsize=10)
    for row, (label, panel_values) in enumerate(panels):
        sky = full_sky(nside, pixels, panel_values)
        norm_range = _value_range(statistic, panel_values)
        axes = figure.add_subplot(len(panels), columns, row * columns + 1)
        image = _draw(axes, healpy.projector.MollweideProj(xsize=MOLLWEIDE_WIDTH), sky, nside, statistic, norm_range)
        axes.set_title(f"{label} Mollweide, RA 0 at the centre, east left".lstrip(" "), fontsize=9)
        _colour_bar(figure, axes, image, statistic)
        if zoom is not None:
            centre_ra, centre_dec, radius = zoom
            projector = healpy.projector.GnomonicProj(
                rot=(centre_ra, centre_dec, 0.0),
                xsize=ZOOM_WIDTH,
                reso=2.2 * radius * 60.0 / ZOOM_WIDTH,
            )
            zoomed = figure.add_subplot(len(panels), columns, row * columns + 2)
            image = _draw(zoomed, projector, sky, nside, statistic, norm_range)
            zoomed.set_title(
                f"{label} zoom on RA {centre_ra:.2f}, Dec {centre_dec:+.2f} deg (gnomonic)".lstrip(" "), fontsize=9
            )
            _colour_bar(figure, zoomed, image, statistic)
    figure.savefig(path, dpi=DPI)
    return path


def _draw(axes, projector, sky: np.ndarray, nside: int, statistic: Statistic, norm_range: tuple[float, float]):
    image = projector.projmap(sky.astype(np.float64), lambda x, y, z: healpy.vec2pix(nside, x, y, z, nest=True))
    outside = np.isneginf(image)  # projmap puts -inf outside the projection's outline
    unseen = healpy.mask_bad(image) & ~outside
    extent = projector.get_extent()
    # Pixels no frame covers in light grey, the outside of the outline left blank.
    axes.imshow(
        np.where(unseen, 0.85, np.nan),
        cmap="gray",
        vmin=0.0,
        vmax=1.0,
        extent=extent,
        origin="lower",
        interpolation="nearest",
    )
    shown = axes.imshow(
        np.ma.masked_where(unseen | outside, image),
        cmap=_colour_map(statistic),
        vmin=norm_range[0],
        vmax=norm_range[1],
        extent=extent,
        origin="lower",
        interpolation="nearest",
    )
    axes.set_axis_off()
    return shown


def _colour_bar(figure, axes, image, statistic: Statistic) -> None:
    label = statistic.name + (f" [{statistic.unit}]" if statistic.unit else "")
    bar = figure.colorbar(image, ax=axes, orientation="horizontal", fraction=0.06, pad=0.04)
    bar.set_label(label, fontsize=9)
    if statistic.kind == "class":
        bar.set_ticks(range(N_CLASSES))


def _colour_map(statistic: Statistic):
    import matplotlib

    if statistic.kind == "class":
        return matplotlib.colormaps["viridis"].resampled(N_CLASSES).with_extremes(bad="none")
    return matplotlib.colormaps["viridis"].with_extremes(bad="none")


def _value_range(statistic: Statistic, values: np.ndarray) -> tuple[float, float]:
    if statistic.kind == "class":
        return -0.5, N_CLASSES - 0.5
    if statistic.kind == "fraction":
        return 0.0, 1.0
    finite = values[np.isfinite(values)] if values.size else values
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(np.min(finite)), float(np.max(finite))
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def _zoom_window(nside: int, pixels: np.ndarray) -> tuple[float, float, float] | None:
    """Centre (RA, Dec) and radius in degrees of the covered pixels, when small enough to zoom on."""
    if pixels.size == 0:
        return None
    vectors = np.column_stack(healpy.pix2vec(nside, pixels, nest=True))
    centre = vectors.mean(axis=0)
    length = np.linalg.norm(centre)
    if length < 1e-6:
        return None
    centre /= length
    radius = float(np.degrees(np.arccos(np.clip(vectors @ centre, -1.0, 1.0)).max()))
    radius += float(np.degrees(healpy.max_pixrad(nside)))
    if radius > ZOOM_RADIUS_DEG:
        return None
    centre_ra, centre_dec = healpy.vec2ang(centre, lonlat=True)
    return float(centre_ra[0]) % 360.0, float(centre_dec[0]), max(radius, 0.05)
