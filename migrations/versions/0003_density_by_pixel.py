"""Per-pixel aggregate of field_density: density_by_pixel() and the polygon_area_deg2() it uses.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Frozen copies of density_db/views.py at this revision (tests check they agree).
POLYGON_AREA_FUNCTION = """
CREATE FUNCTION polygon_area_deg2(vertex_ra double precision[], vertex_dec double precision[])
RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
-- Fan of triangles from the first vertex; each triangle's spherical excess by
-- Van Oosterom & Strackee (1983): tan(E/2) = a.(b x c) / (1 + a.b + b.c + c.a).
-- Signed excesses add up to the area of any simple polygon smaller than a hemisphere.
WITH vertex AS (
    SELECT n, cosd(dec) * cosd(ra) AS x, cosd(dec) * sind(ra) AS y, sind(dec) AS z
    FROM unnest(vertex_ra, vertex_dec) WITH ORDINALITY AS v(ra, dec, n)
)
SELECT degrees(degrees(abs(coalesce(sum(2 * atan2(
    a.x * (b.y * c.z - b.z * c.y) + a.y * (b.z * c.x - b.x * c.z) + a.z * (b.x * c.y - b.y * c.x),
    1 + a.x * b.x + a.y * b.y + a.z * b.z + b.x * c.x + b.y * c.y + b.z * c.z + c.x * a.x + c.y * a.y + c.z * a.z
)), 0))))
FROM vertex a
JOIN vertex b ON b.n > 1
JOIN vertex c ON c.n = b.n + 1
WHERE a.n = 1
$$
"""

DENSITY_BY_PIXEL_FUNCTION = """
CREATE FUNCTION density_by_pixel(pixel_order integer, chosen_band text DEFAULT NULL)
RETURNS TABLE (
    healpix_order integer,
    pixel bigint,
    band text,
    frames bigint,
    classified_frames bigint,
    max_class smallint,
    mode_class smallint,
    mean_bright_per_deg2 double precision,
    bright_count_frames bigint
)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF pixel_order IS NULL OR pixel_order NOT BETWEEN 0 AND 29 THEN
        RAISE EXCEPTION 'pixel_order must be a HEALPix order between 0 and 29, got %', pixel_order
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT
        pixel_order,
        fd.hpx >> (2 * (29 - pixel_order)),
        fd.band,
        count(*),
        count(fd.density_class),
        max(fd.density_class),
        -- ties go to the higher (more crowded) class
        mode() WITHIN GROUP (ORDER BY fd.density_class DESC),
        avg(surface.bright_per_deg2),
        count(surface.bright_per_deg2)
    FROM field_density fd
    JOIN frame f ON f.id = fd.frame_id
    CROSS JOIN LATERAL (
        SELECT fd.bright_count
            / NULLIF(polygon_area_deg2(f.corner_ra, f.corner_dec) * coalesce(fd.valid_fraction, 1), 0)
            AS bright_per_deg2
    ) surface
    WHERE chosen_band IS NULL OR fd.band = chosen_band
    GROUP BY 2, 3
    ORDER BY 3, 2;
END
$$
"""


def upgrade() -> None:
    op.execute(POLYGON_AREA_FUNCTION)
    op.execute(DENSITY_BY_PIXEL_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION density_by_pixel(integer, text)")
    op.execute("DROP FUNCTION polygon_area_deg2(double precision[], double precision[])")
