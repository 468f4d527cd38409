"""Planning: field flags recomputed from a rules file, and reprocessing campaigns built from the stored results.

The flag bits themselves and the SQL that sets them are core
(:mod:`density_db.flags`), since every stored result carries them.

* :mod:`~density_db.planning.rules`: the rules file (TOML) with the flag
  thresholds and the ordered campaign branches, checked and compiled to SQL;
* :mod:`~density_db.planning.campaigns`: campaigns and their items in the
  catalog (create, list, show, diff, update from a pipeline's report);
* :mod:`~density_db.planning.exports`: campaign items as CSV, ECSV, JSON and
  one MOC per branch.

Everything that touches many rows runs as SQL on the server: a campaign over
millions of frames never travels to Python row by row.
"""
