"""SQL of the documented views and functions: the catalog's query surface.

``field_density`` gives one row per frame with its preferred density result:
the result of the latest run (highest ``run_id``), or NULL density columns for
a frame that has no result yet.  ``field_density_for_run(run_id)`` gives the
same columns restricted to the results of one chosen run.

The Alembic revisions carry frozen copies of this SQL; a test checks that the
migrated database defines exactly these.
"""

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

FIELD_DENSITY_VIEW = f"""
CREATE VIEW field_density AS
SELECT{FIELD_DENSITY_COLUMNS}
FROM frame f
JOIN exposure e ON e.id = f.exposure_pk
LEFT JOIN LATERAL (
    SELECT * FROM density_result d
    WHERE d.frame_id = f.id
    ORDER BY d.run_id DESC, d.id DESC
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

