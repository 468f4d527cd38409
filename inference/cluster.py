"""The Dask cluster an ingest runs on: an existing one by address, or a local one sized to the machine.

* ``--scheduler ADDRESS`` or ``DASK_SCHEDULER_ADDRESS``: connect to a running
  cluster (dask-jobqueue on SLURM, dask-kubernetes, dask-cuda...); density-db
  neither starts nor stops it.
* otherwise a :class:`distributed.LocalCluster` of worker processes, one
  thread each: with CUDA (``--device auto`` on a GPU machine, or ``cuda``)
  one worker per GPU; on the CPU one worker per core, each with one torch
  thread, since images are independent and processes scale better than
  threads for the FITS reading and NumPy reduction.
"""

from __future__ import annotations

import logging
import os

from density_db.errors import ConfigurationError
from density_db.inference.devices import resolve_device

SCHEDULER_ENVIRONMENT_VARIABLE = "DASK_SCHEDULER_ADDRESS"

WORKER_MALLOC_ENVIRONMENT = {
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
    "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20),
}
"""glibc allocator settings for worker processes, set before they start (glibc reads them once).

Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` so that workers hand
freed memory back to the system at once; with it, every ~10 MB row block
of the streamed preprocessing is mapped and faulted in afresh, and a
full-size detector takes 0.49 s instead of 0.30 s.  Blocks under 64 MB now
come from a heap that keeps up to 256 MB; whole images (340 MB) are still
mapped and returned when freed.  Workers of an existing cluster should be
started with the same two variables.
"""


class Cluster:
    """Where an ingest's tasks run; a context manager that closes what it started.

    A local cluster starts on first use of :attr:`client`, so a run with
    nothing left to compute starts no worker.

    Parameters
    ----------
    scheduler
        Address of an existing scheduler; ``None`` falls back to
        ``DASK_SCHEDULER_ADDRESS``, then to a local cluster.
    workers
        Worker processes of a local cluster (default: one per GPU, or one per
        CPU core); ignored with a scheduler address.
    device
        ``auto``, ``cpu`` or ``cuda``.

    Raises
    ------
    ConfigurationError
        If the scheduler cannot be reached, or ``cuda`` is asked for on a
        machine without CUDA for a local cluster.

    Attributes
    ----------
    address : str or None
        The existing scheduler's address (``None`` for a local cluster).
    device : str
        ``cpu`` or ``cuda`` for a local cluster; as requested for a remote one
        (each worker resolves ``auto`` itself).
    workers, threads : int
        Workers and their threads in total (for a remote cluster, at connection time).
    """

    def __init__(self, *, scheduler: str | None, workers: int | None, device: str) -> None:
        self.address = scheduler or os.environ.get(SCHEDULER_ENVIRONMENT_VARIABLE) or None
        self._local_cluster = None
        self._client = None
        self._environment: dict[str, str] = {}  # os.environ before the local cluster started
        if self.address:
            self.device = device
            self._client = self._connect(self.address)
            info = self._client.scheduler_info()["workers"]
            self.workers = len(info)
            self.threads = sum(worker["nthreads"] for worker in info.values())
        else:
            self.device = resolve_device(device)
            self.workers = workers or (_gpu_count() if self.device == "cuda" else _cpu_count())
            self.threads = self.workers

    @property
    def local(self) -> bool:
        return self.address is None

    @property
    def client(self):
        """The ``distributed.Client``, starting the local cluster on first use."""
        if self._client is None:
            import dask
            from distributed import Client, LocalCluster

            self._environment = dict(os.environ)
            with dask.config.set(
                {
                    f"distributed.nanny.pre-spawn-environ.{name}": value
                    for name, value in WORKER_MALLOC_ENVIRONMENT.items()
                }
            ):
                self._local_cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    silence_logs=logging.ERROR,
                    # No dashboard; the scheduler's small HTTP server takes any free port, not 8787.
                    dashboard_address=None,
                    scheduler_kwargs={"dashboard_address": ":0"},
                )
            self._client = Client(self._local_cluster)
        return self._client

    def torch_threads(self) -> int | None:
        """Torch threads per local CPU worker (the cores shared out, at least one); ``None`` elsewhere."""
        if not self.local or self.device != "cpu":
            return None
        return max(1, _cpu_count() // self.workers)

    def describe(self) -> str:
        where = "local" if self.local else f"at {self.address}"
        return f"{self.workers} {self.device} worker{'s' if self.workers != 1 else ''} ({where})"

    @staticmethod
    def _connect(address: str):
        from distributed import Client

        try:
            return Client(address, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise ConfigurationError(f"cannot reach the Dask scheduler at {address}: {error}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._local_cluster is not None:
            self._local_cluster.close()
            self._local_cluster = None
            # Dask's nannies write the workers' pre-spawn environment (allocator settings,
            # OMP_NUM_THREADS=1) into this process's os.environ, where every later subprocess
            # would inherit it: put back what was there.
            os.environ.clear()
            os.environ.update(self._environment)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _cpu_count() -> int:
    """Cores this process may use (the affinity mask, which containers and batch systems set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
