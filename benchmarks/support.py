"""What the benchmarks share: the machine they ran on and fresh databases on the embedded server."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from density_db.database import Database, connect, sqlalchemy_url, upgrade
from density_db.embedded import EmbeddedServer, ServerStatus

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where results and the benchmarks' own DENSITY_DB_HOME go (git-ignored)."""

DEFAULT_HOME = RESULTS_DIR / "density_db_home"


@dataclass(frozen=True)
class Machine:
    """The machine and software a benchmark ran on, printed and stored with its figures."""

    cpu_model: str
    cpu_cores: int
    memory_gib: float
    python: str
    software: dict[str, str]
    """Versions and settings that matter to the figures (PostgreSQL, NumPy, threads ...)."""
    load_average_1min: float
    """Load of the machine when the figures were taken (other work running skews them)."""

    def describe(self) -> str:
        software = "".join(f"; {name} {value}" for name, value in self.software.items())
        return (
            f"{self.cpu_model}, {self.cpu_cores} cores, {self.memory_gib:.0f} GiB RAM; Python {self.python}"
            f"{software}; load average {self.load_average_1min:.2f}"
        )


def cpu_model() -> str:
    """The CPU model named in /proc/cpuinfo (the processor name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_machine(software: dict[str, str]) -> Machine:
    """CPU, cores, memory and load of this machine, with the given software versions."""
    return Machine(
        cpu_model=cpu_model(),
        cpu_cores=os.cpu_count() or 0,
        memory_gib=psutil.virtual_memory().total / 2**30,
        python=platform.python_version(),
        software=software,
        load_average_1min=os.getloadavg()[0],
    )


def database_software(libpq_url: str) -> dict[str, str]:
    """Version and buffer size of the PostgreSQL server at ``libpq_url``."""
    with psycopg.connect(libpq_url) as connection:
        version = connection.execute("SHOW server_version").fetchone()[0]
        shared_buffers = connection.execute("SHOW shared_buffers").fetchone()[0]
    return {"PostgreSQL": version, "shared_buffers": shared_buffers}


def database_exists(server: EmbeddedServer, status: ServerStatus, name: str) -> bool:
    with psycopg.connect(server.url(status, database="postgres")) as connection:
        found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return found is not None


def open_benchmark_database(server: EmbeddedServer, status: ServerStatus, name: str) -> Database:
    """Connect to database ``name`` of the embedded server (which must exist)."""
    return connect(sqlalchemy_url(server.url(status, database=name, driver="psycopg")))


def fresh_database(server: EmbeddedServer, status: ServerStatus, name: str) -> Database:
    """Drop database ``name`` if it exists, create it empty and bring it to the current schema."""
    with psycopg.connect(server.url(status, database="postgres"), autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database = open_benchmark_database(server, status, name)
    upgrade(database)
    return database


def write_json(path: Path, machine: Machine, figures: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": asdict(machine), **figures}, indent=2) + "\n")


def median_seconds(action: Callable[[], object], repeats: int, *, warm_up: bool = False) -> float:
    """Median wall time of ``repeats`` calls of ``action`` (after one untimed call with ``warm_up``)."""
    if warm_up:
        action()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's VmHWM, the high-water mark of the process's own memory map.  ``ru_maxrss`` is not:
    a process started by ``subprocess`` inherits its parent's peak at the time of the exec, so a
    child of a large parent (torch, a test runner) reports the parent's memory as its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; elsewhere an estimate
