"""The command line's contract: fast help, version, exit codes, error messages."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from density_db import __version__
from density_db.cli import main


def test_help_imports_no_heavy_module() -> None:
    probe = (
        "import sys; from click.testing import CliRunner; from density_db.cli import main; "
        "result = CliRunner().invoke(main, ['ingest', '--help']); assert result.exit_code == 0; "
        "heavy = ('torch', 'dask', 'distributed', 'sqlalchemy', 'astropy', 'healpy'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_every_command_has_help() -> None:
    for command in (
        ["db", "start"],
        ["db", "upgrade"],
        ["ingest"],
        ["query", "sql"],
        ["query", "cone"],
        ["query", "frames"],
    ):
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage: " in result.output


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_usage_error_exits_2() -> None:
    assert CliRunner().invoke(main, ["query", "cone", "10"]).exit_code == 2
    assert CliRunner().invoke(main, ["no-such-command"]).exit_code == 2


def test_domain_error_exits_1_with_one_line_and_a_traceback_only_with_verbose(run_cli) -> None:
    quiet = run_cli("query", "cone", "10", "95", "1")
    assert quiet.exit_code == 1
    assert quiet.output.strip() == "Error: declination must be within [-90, 90] degrees, got 95.0"
    verbose = run_cli("-v", "query", "cone", "10", "95", "1")
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.output


def test_unknown_profile_is_a_clear_error(run_cli, tmp_path) -> None:
    result = run_cli("ingest", "--metadata-only", "--profile", "no-such-instrument", str(tmp_path))
    assert result.exit_code == 1
    assert "no-such-instrument" in result.output
