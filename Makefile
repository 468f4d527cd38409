# density-db: the two commands that set a fresh machine up.
#   make demo   create .venv, install, simulate a few full-size detectors, ingest them, query, map and plan them
#   make test   create .venv if missing, install with test extras, run the tests
#   make lint   ruff: lint and formatting check (configured in pyproject.toml)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-output

.PHONY: install test lint demo benchmark docs clean-demo

# Reinstall when the package definition changes; the stamp keeps repeated runs fast.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: install
	$(BIN)/density-db simulate exposures --out $(DEMO_DIR)/sparse --field galactic_l90_b50 --detectors 8,9,13 --compress --seed 1
	$(BIN)/density-db simulate exposures --out $(DEMO_DIR)/medium --field default --detectors 8,9,13 --compress --seed 3
	$(BIN)/density-db simulate exposures --out $(DEMO_DIR)/crowded --field galactic_centre --detectors 8,9,13 --compress --seed 2
	$(BIN)/density-db db upgrade
	$(BIN)/density-db ingest --run-name demo $(DEMO_DIR)/sparse $(DEMO_DIR)/medium $(DEMO_DIR)/crowded
	$(BIN)/density-db query sql --format table \
	    "SELECT exposure_id, detector, band, round(ra::numeric, 3) AS ra, round(dec::numeric, 3) AS dec, \
	            density_class, round(class_confidence::numeric, 3) AS confidence, round(bright_count::numeric) AS bright_count, \
	            regression_status, flag_names(flags) AS flags FROM field_density ORDER BY density_class, exposure_id, detector"
	$(BIN)/density-db simulate truth $(DEMO_DIR)/sparse $(DEMO_DIR)/medium $(DEMO_DIR)/crowded --format table
	$(BIN)/density-db query cone 265.1 -28.35 1.0 --band g --format table
	$(BIN)/density-db -q maps build --nside 256 --out $(DEMO_DIR)/maps --png --moc > /dev/null
	@$(BIN)/density-db -q plan delete demo --yes > /dev/null 2>&1 || true
	$(BIN)/density-db plan create demo
	$(BIN)/density-db plan show demo --format table
	@echo
	@echo "Simulated truth per detector: $(DEMO_DIR)/*/manifest.ecsv (beside the answers: density-db simulate truth DIR...)"
	@echo "HEALPix maps (healsparse, healpy FITS, PNG, MOC) of the demo survey: $(DEMO_DIR)/maps/"
	@echo "The campaign's frames: $(BIN)/density-db plan export demo --format csv   (--format moc --out DIR for Aladin)"
	@echo "The catalog is in the embedded PostgreSQL server; open it with:"
	@echo "  $(BIN)/density-db db shell        (or: psql \"\$$($(BIN)/density-db db url)\")"

benchmark: install
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/registration.py
	$(BIN)/python benchmarks/spatial_queries.py
	$(BIN)/python benchmarks/simulation.py
	$(BIN)/python benchmarks/sky_model.py
	$(BIN)/python benchmarks/preprocessing.py
	$(BIN)/python benchmarks/ingest_throughput.py
	$(BIN)/python benchmarks/label_ceiling.py

# The documentation site (docs/, Sphinx): offline, every warning an error.
docs: install
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "The site: docs/_build/html/index.html"

clean-demo:
	rm -rf $(DEMO_DIR)
