"""SQL of the documented views and functions: the catalog's query surface.

``field_density`` gives one row per frame with its preferred density result:
the result of the latest run (highest ``run_id``), or NULL density columns for
a frame that has no result yet.  ``field_density_for_run(run_id)`` gives the
same columns restricted to the results of one chosen run.

``polygon_area_deg2(vertex_ra, vertex_dec)`` is the area of a spherical
polygon (a frame's corners) in square degrees, and
``density_by_pixel(pixel_order, chosen_band)`` aggregates ``field_density``
per HEALPix pixel and band: frames, maximum and most frequent density class,
mean bright-star surface density.  It places each frame in the pixel of its
centre only, an approximation for quick looks; the maps built from footprints
are exact.

``flag_names(flags)`` names the bits set in a ``flags`` bitmask (see
:mod:`density_db.flags`), e.g. ``SELECT flag_names(flags) FROM
field_density``.

``CAMPAIGN_ITEM_TRIGGERS`` give ``campaign_item`` the behaviour of foreign
keys on delete (see :class:`density_db.tables.CampaignItem`), one statement
at a time instead of one row at a time.

The Alembic revisions carry frozen copies of this SQL; a test checks that the
migrated database defines exactly these.
"""

from density_db.flags import FLAGS

FIELD_DENSITY_COLUMNS = """
    f.id AS frame_id,
    e.instrument,
    e.exposure_id,
    f.detector,
    f.band,
    f.ra,
    f.dec,
    f.hpx,
    e.mjd,
    r.density_class,
    r.class_confidence,
    r.bright_count,
    r.log_bright,
    r.regression_status,
    r.flags,
    r.id AS result_id,
    r.run_id,
    c.name AS classifier,
    g.name AS regressor,
    f.valid_fraction,
    f.path,
    f.hdu_index"""

PREFERRED_RESULT_ORDER = "d.run_id DESC, d.id DESC"
"""How a frame's preferred result is chosen among its results ``d``: the latest run, then the latest row.

``field_density`` takes the first result in this order; queries that read the
preferred results of many frames at once sort by ``(d.frame_id, ...)`` in it
with ``DISTINCT ON (d.frame_id)`` instead of one lookup per frame.
"""

FIELD_DENSITY_VIEW = f"""
CREATE VIEW field_density AS
SELECT{FIELD_DENSITY_COLUMNS}
FROM frame f
JOIN exposure e ON e.id = f.exposure_pk
LEFT JOIN LATERAL (
    SELECT d.id, d.run_id, d.classifier_id, d.regressor_id, d.density_class, d.class_confidence,
           d.bright_count, d.log_bright, d.regression_status, d.flags
    FROM density_result d
    WHERE d.frame_id = f.id
    ORDER BY {PREFERRED_RESULT_ORDER}
    LIMIT 1
) r ON true
LEFT JOIN model c ON c.id = r.classifier_id
LEFT JOIN model g ON g.id = r.regressor_id
"""

FIELD_DENSITY_FOR_RUN_FUNCTION = f"""
CREATE FUNCTION field_density_for_run(chosen_run_id bigint)
RETURNS SETOF field_density
LANGUAGE sql STABLE AS $$
SELECT{FIELD_DENSITY_COLUMNS}
FROM density_result r
JOIN frame f ON f.id = r.frame_id
JOIN exposure e ON e.id = f.exposure_pk
JOIN model c ON c.id = r.classifier_id
JOIN model g ON g.id = r.regressor_id
WHERE r.run_id = chosen_run_id
$$
"""


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

_FLAG_ROWS = ",\n    ".join(f"({flag.bit}, '{flag.name}')" for flag in FLAGS)

FLAG_NAMES_FUNCTION = f"""
CREATE FUNCTION flag_names(flags bigint)
RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
SELECT coalesce(array_agg(b.name ORDER BY b.bit), '{{}}')
FROM (VALUES
    {_FLAG_ROWS}
) AS b(bit, name)
WHERE flags & (CAST(1 AS bigint) << b.bit) <> 0
$$
"""

CAMPAIGN_ITEM_CASCADE_FUNCTIONS = (
    """
CREATE FUNCTION campaign_item_forget_campaigns()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM campaign_item i USING deleted d WHERE i.campaign_id = d.id;
    RETURN NULL;
END
$$
""",
    """
CREATE FUNCTION campaign_item_forget_frames()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM campaign_item i USING deleted d WHERE i.frame_id = d.id;
    RETURN NULL;
END
$$
""",
    """
CREATE FUNCTION campaign_item_forget_results()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE campaign_item i SET result_id = NULL FROM deleted d WHERE i.result_id = d.id;
    RETURN NULL;
END
$$
""",
)

CAMPAIGN_ITEM_TRIGGERS = tuple(
    f"CREATE TRIGGER campaign_item_after_{table}_delete AFTER DELETE ON {table} "
    f"REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION campaign_item_forget_{what}()"
    for table, what in (("campaign", "campaigns"), ("frame", "frames"), ("density_result", "results"))
)
