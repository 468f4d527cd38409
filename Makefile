# density-db: the two commands that set a fresh machine up.
#   make demo   create .venv, install, register demo frames on the embedded server, query them
#   make test   create .venv if missing, install with test extras, run the tests

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-output

.PHONY: install test demo benchmark clean-demo

# Reinstall when the package definition changes; the stamp keeps repeated runs fast.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python -m density_db.synthetic --out $(DEMO_DIR)/frames --exposures 4
	$(BIN)/density-db ingest --metadata-only $(DEMO_DIR)/frames
	$(BIN)/density-db query sql --format table \
	    "SELECT band, count(*) AS frames, count(DISTINCT exposure_id) AS exposures FROM field_density GROUP BY band ORDER BY band"
	$(BIN)/density-db query cone 150.0 2.2 0.25 --format table
	$(BIN)/density-db query frames --at 150.0 2.2 --format table
	@echo
	@echo "The catalog is in the embedded PostgreSQL server; open it with:"
	@echo "  $(BIN)/density-db db shell        (or: psql \"\$$($(BIN)/density-db db url)\")"

benchmark: install
	$(BIN)/python benchmarks/registration.py
	$(BIN)/python benchmarks/spatial_queries.py

clean-demo:
	rm -rf $(DEMO_DIR)
