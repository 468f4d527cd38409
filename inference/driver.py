"""The ingest driver: register inputs, farm shards of frames out to Dask, store the answers in batches.

:func:`ingest` is the library's one call for it (the command line, the
benchmarks and the tests use it): it opens the run, starts or uses a
cluster, and returns the run and its totals.  One pass over the inputs does
everything, streaming:

1. Files are read for their headers and registered in batches
   (:func:`density_db.registration.register_batches`), so a list of a million
   paths is never held, as paths, tasks or ORM objects.
2. Of each registered batch, the frames without a result for this model pair
   (all of them with ``rerun``) are cut into shards of ``shard_size`` frames.
3. At most ``max_in_flight`` shards are submitted to Dask at a time; a worker
   reads and reduces its images and returns small rows
   (:mod:`density_db.inference.worker`).  Dask retries a task whose worker
   died; a shard that keeps killing workers is split into single frames, and
   a frame that still does gets a ``worker_died`` failure row.
4. Rows are written in batches (:func:`density_db.results.write_results`).

PostgreSQL is the ledger: what is stored is never recomputed (without
``rerun``), and what was lost in a crash is recomputed by the next run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from density_db.config import DEFAULT_PROFILE
from density_db.database import Database
from density_db.flag_rules import FlagRules, flag_rules_in_force
from density_db.flags import FlagThresholds
from density_db.inference.cluster import Cluster
from density_db.inference.model_registry import ModelPair
from density_db.inference.worker import FrameTask, ModelSpec, ShardOutcome, process_shard
from density_db.instrument import InstrumentProfile, load_profile
from density_db.registration import RegisteredFrame, RegistrationCounts, register_batches
from density_db.results import InferenceFailure, ResultRow, write_results
from density_db.runs import ActiveRun, begin_run, recording_outcome

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 2
"""Frames per task on CPU workers: a frame takes ~0.3 s there, so small shards balance the load."""
GPU_SHARD_SIZE = 64
"""Frames per task on GPU workers: one batch through the networks."""
DEFAULT_WRITE_BATCH = 200
_FLUSH_SECONDS = 2.0  # write at least this often, so a crash loses little and progress is visible in SQL
_TASK_RETRIES = 2
_POLL_SECONDS = 0.25


@dataclass
class IngestCounts:
    """Running totals of an ingest, shown by the progress bar and stored on the run."""

    registration: RegistrationCounts = field(default_factory=RegistrationCounts)
    queued: int = 0
    """Frames sent to the workers."""
    already_done: int = 0
    """Registered frames that had a result for this model pair already (skipped)."""
    results: int = 0
    """Frames answered by this run (stored at the next batch write)."""
    inference_failures: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def processed(self) -> int:
        """Frames the workers are done with (answered or failed)."""
        return self.results + self.inference_failures

    @property
    def failures(self) -> int:
        return self.registration.failures + self.inference_failures

    def as_dict(self) -> dict[str, int]:
        return {
            "files": self.registration.files,
            "frames_new": self.registration.frames_new,
            "frames_known": self.registration.frames_known,
            "register_failures": self.registration.failures,
            "queued": self.queued,
            "already_done": self.already_done,
            "results": self.results,
            "inference_failures": self.inference_failures,
        }


ProgressCallback = Callable[[IngestCounts], None]


@dataclass(frozen=True)
class IngestOptions:
    """How an ingest cuts and paces its work, and what it stores; every default lives here.

    Attributes
    ----------
    shard_size : int or None
        Frames per Dask task (one batch through the networks); ``None``:
        :data:`DEFAULT_SHARD_SIZE` on CPU workers, :data:`GPU_SHARD_SIZE` on GPU workers.
    max_in_flight : int or None
        Tasks submitted and not yet collected; bounds memory on the
        scheduler and the work redone after a crash.  ``None``: twice the
        cluster's worker threads, at least 2.
    write_batch : int
        Result rows per database transaction (also written every 2 s).
    rerun : bool
        Recompute frames that have a result for this model pair and replace it.
    register_batch : int
        Files' frames registered per transaction.
    flag_rules : FlagRules, optional
        Thresholds of the flags set on the new results; the ones in force
        (:func:`~density_db.flag_rules.flag_rules_in_force`) when ``None``.
    profile : str
        Instrument profile of the inputs: a shipped name (``csst``) or a TOML file.
    run_name : str, optional
        A name for the run, stored in the ``run`` table.
    """

    shard_size: int | None = None
    max_in_flight: int | None = None
    write_batch: int = DEFAULT_WRITE_BATCH
    rerun: bool = False
    register_batch: int = 500
    flag_rules: FlagRules | None = None
    profile: str = DEFAULT_PROFILE
    run_name: str | None = None

    def for_cluster(self, cluster: Cluster) -> IngestOptions:
        """These options with the shard size and tasks in flight the cluster's device and threads call for."""
        return replace(
            self,
            shard_size=self.shard_size or (GPU_SHARD_SIZE if cluster.device == "cuda" else DEFAULT_SHARD_SIZE),
            max_in_flight=self.max_in_flight or max(2, 2 * cluster.threads),
        )


@dataclass(frozen=True)
class IngestOutcome:
    """What an ingest did: its ``run`` row and the totals stored on it."""

    run_id: int
    counts: IngestCounts


def ingest(
    database: Database,
    paths: Iterable[str | Path],
    *,
    models: ModelPair,
    options: IngestOptions = IngestOptions(),
    cluster: Cluster | None = None,
    progress: ProgressCallback | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> IngestOutcome:
    """Register ``paths`` and store a density result (or a failure) for every frame without one for ``models``.

    The whole ingest is one ``run`` row: its ``config`` records the models,
    the profile, the cluster, the options and the flag thresholds; its
    status and totals are set when it ends, however it ends.  Running again
    skips what is stored, so an interrupted ingest is finished by running it
    again.

    Parameters
    ----------
    paths
        Input files (each science HDU becomes a frame), consumed as they come:
        a generator over millions of paths is never held in memory.
    models : ModelPair
        The classifier and regressor (:meth:`ModelPair.resolve`).
    options : IngestOptions
        Pacing, rerun, flag thresholds, profile and run name.
    cluster : Cluster, optional
        Where shards run; a local cluster sized to this machine when ``None``
        (started only if some frame needs work, closed at the end).
    progress
        Called with the running totals after every registered batch and every finished shard.
    run_config
        Extra entries for the run's ``config``, such as how the inputs were named.

    Raises
    ------
    DensityDBError
        When the profile or models are unusable, the models cannot be loaded
        on a worker, or the database stays unreachable; what was computed
        before is stored first and the run is marked failed.
    KeyboardInterrupt
        Passed on after storing what was computed; the run is marked interrupted.
    """
    profile = load_profile(options.profile)
    flag_rules = options.flag_rules or flag_rules_in_force(database)
    with contextlib.ExitStack() as stack:
        if cluster is None:
            cluster = stack.enter_context(Cluster(scheduler=None, workers=None, device="auto"))
        options = options.for_cluster(cluster)
        spec = models.worker_spec(device=cluster.device, torch_threads=cluster.torch_threads())
        config = {
            **(run_config or {}),
            "profile": profile.name,
            "classifier": models.classifier.name,
            "regressor": models.regressor.name,
            "device": spec.device,
            "label_rule": models.label_rule,
            "preprocessing_version": spec.preprocessing_version,
            "scheduler": cluster.address,
            "workers": cluster.workers,
            "shard_size": options.shard_size,
            "max_in_flight": options.max_in_flight,
            "rerun": options.rerun,
            "flag_rules": flag_rules.provenance,
        }
        classifier_id, regressor_id = models.ids
        counts = IngestCounts()
        with begin_run(
            database,
            kind="ingest",
            name=options.run_name,
            config=config,
            classifier_id=classifier_id,
            regressor_id=regressor_id,
        ) as run:
            with recording_outcome(run, counts.as_dict):
                _stream(
                    database,
                    paths,
                    profile,
                    counts,
                    cluster=cluster,
                    spec=spec,
                    models=models,
                    run=run,
                    options=options,
                    flag_thresholds=flag_rules.thresholds,
                    report=progress or (lambda _counts: None),
                )
    return IngestOutcome(run_id=run.id, counts=counts)


def _stream(
    database: Database,
    paths: Iterable[Path],
    profile: InstrumentProfile,
    counts: IngestCounts,
    *,
    cluster: Cluster,
    spec: ModelSpec,
    models: ModelPair,
    run: ActiveRun,
    options: IngestOptions,
    flag_thresholds: FlagThresholds,
    report: ProgressCallback,
) -> None:
    """The loop of :func:`ingest` inside its run: discovery feeds shards to the cluster, answers go to the writer.

    ``options`` has its shard size and tasks in flight set
    (:meth:`IngestOptions.for_cluster`); ``counts`` is updated in place.
    """
    writer = _ResultWriter(
        database,
        counts,
        models=models,
        run=run,
        options=options,
        flag_thresholds=flag_thresholds,
    )
    discovery = _Discovery(
        lambda: _pending_shards(
            database,
            paths,
            profile,
            counts,
            models=models,
            run=run,
            options=options,
            report=report,
        ),
        capacity=options.max_in_flight,
    )
    dispatcher = _Dispatcher(cluster, spec, run_id=run.id)
    try:
        while True:
            while len(dispatcher.in_flight) < options.max_in_flight and (shard := discovery.next_shard()):
                counts.queued += len(shard)
                dispatcher.submit(shard)
            if discovery.exhausted and not dispatcher.in_flight:
                break
            if dispatcher.in_flight:
                for outcome in dispatcher.collect(timeout=_POLL_SECONDS):
                    writer.add(outcome)
            else:
                discovery.wait(timeout=_POLL_SECONDS)
            writer.flush_if_due()
            report(counts)
    except BaseException:
        discovery.stop()
        dispatcher.cancel()
        _store_what_was_computed(writer)
        raise
    writer.flush()
    report(counts)


def _store_what_was_computed(writer: _ResultWriter) -> None:
    """On the way out of a failed or interrupted run: keep what the workers answered, if the database lets us."""
    try:
        writer.flush()
    except Exception as error:  # noqa: BLE001 - the original error is the one to report
        logger.warning(
            "could not store the last %d answers (%s); the next run recomputes them",
            len(writer.results) + len(writer.failures),
            error,
        )


def _pending_shards(
    database: Database,
    paths: Iterable[Path],
    profile: InstrumentProfile,
    counts: IngestCounts,
    *,
    models: ModelPair,
    run: ActiveRun,
    options: IngestOptions,
    report: ProgressCallback,
) -> Iterator[list[FrameTask]]:
    """Register the inputs batch by batch and yield shards of the frames that still need a result."""
    shard: list[FrameTask] = []
    batches = register_batches(
        database,
        paths,
        profile,
        counts.registration,
        run_id=run.id,
        batch_size=options.register_batch,
        progress=lambda _r: report(counts),
    )
    for batch in batches:
        todo = {f.frame_id for f in batch} if options.rerun else _without_result(database, batch, models)
        counts.already_done += len(batch) - len(todo)
        for registered in batch:
            if registered.frame_id in todo:
                shard.append(FrameTask.of_frame(registered.frame_id, registered.header, profile))
                if len(shard) == options.shard_size:
                    yield shard
                    shard = []
    if shard:
        yield shard


def _without_result(database: Database, batch: list[RegisteredFrame], models: ModelPair) -> set[int]:
    """The frames of ``batch`` that have no result for this model pair."""
    classifier_id, regressor_id = models.ids
    with database.engine.connect() as connection:
        return set(
            connection.execute(
                sa.text(
                    "SELECT f.id FROM unnest(CAST(:ids AS bigint[])) AS f(id) WHERE NOT EXISTS ("
                    " SELECT 1 FROM density_result r WHERE r.frame_id = f.id"
                    " AND r.classifier_id = :classifier AND r.regressor_id = :regressor)"
                ),
                {"ids": [f.frame_id for f in batch], "classifier": classifier_id, "regressor": regressor_id},
            ).scalars()
        )


class _Discovery:
    """Reads and registers the inputs on a thread of its own, handing shards over through a bounded queue.

    The main thread keeps collecting results and writing them while input
    discovery waits (on a slow file system, or on a list still being
    written to stdin); the queue's bound keeps discovery from running far
    ahead of the workers.
    """

    _END = object()

    def __init__(self, shards: Callable[[], Iterator[list[FrameTask]]], *, capacity: int) -> None:
        self._shards = shards
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, capacity))
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self.finished = False
        self._held: list[FrameTask] | None = None  # a shard taken by wait() and not handed out yet
        self._thread = threading.Thread(target=self._produce, name="density-db input discovery", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for shard in self._shards():
                if not self._put(shard):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the main thread, which raises it
            self._error = error
        self._put(self._END)

    def _put(self, item) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def next_shard(self, timeout: float | None = None) -> list[FrameTask] | None:
        """The next shard if one is ready (waiting up to ``timeout``), else ``None``; raises discovery's error."""
        if self._held is not None:
            shard, self._held = self._held, None
            return shard
        if self.finished:
            return None
        try:
            item = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
        except queue.Empty:
            return None
        if item is self._END:
            self.finished = True
            if self._error is not None:
                raise self._error
            return None
        return item

    def wait(self, timeout: float) -> None:
        """Block until a shard is ready or discovery ends (at most ``timeout``), keeping what arrived."""
        if self._held is None:
            self._held = self.next_shard(timeout=timeout)

    @property
    def exhausted(self) -> bool:
        """Every shard was handed out."""
        return self.finished and self._held is None

    def stop(self) -> None:
        self._stopping.set()


class _Dispatcher:
    """Submits shards to Dask and hands back their outcomes as they finish."""

    def __init__(self, cluster: Cluster, spec: ModelSpec, *, run_id: int) -> None:
        self.cluster = cluster
        self.spec = spec
        self.run_id = run_id
        self.in_flight: dict[object, list[FrameTask]] = {}
        self._serial = itertools.count()

    def submit(self, shard: list[FrameTask]) -> None:
        future = self.cluster.client.submit(
            process_shard,
            shard,
            self.spec,
            key=f"density-db-run{self.run_id}-shard{next(self._serial)}",
            retries=_TASK_RETRIES,
            pure=False,
        )
        self.in_flight[future] = shard

    def collect(self, timeout: float) -> list[ShardOutcome]:
        """Outcomes of the shards that finish within ``timeout``.

        A shard whose workers keep dying is split into single frames and
        resubmitted; a single frame that still kills its worker gets a
        ``worker_died`` failure.
        """
        from distributed import wait
        from distributed.scheduler import KilledWorker

        try:
            done, _pending = wait(list(self.in_flight), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:  # nothing finished in time
            return []
        outcomes = []
        for future in done:
            shard = self.in_flight.pop(future)
            try:
                outcomes.append(future.result())
            except KilledWorker:
                if len(shard) > 1:
                    logger.warning(
                        "a shard of %d frames killed its workers; retrying its frames one by one", len(shard)
                    )
                    for task in shard:
                        self.submit([task])
                else:
                    outcomes.append(ShardOutcome(failures=[_worker_died(shard[0])]))
            finally:
                future.release()
        return outcomes

    def cancel(self) -> None:
        if self.in_flight:
            self.cluster.client.cancel(list(self.in_flight))
            self.in_flight.clear()


def _worker_died(task: FrameTask) -> InferenceFailure:
    return InferenceFailure(
        task.frame_id,
        task.path,
        task.hdu_index,
        "worker_died",
        "every worker that processed this image died (killed, out of memory, or crashed in a library)",
    )


class _ResultWriter:
    """Buffers outcomes and writes them in batches, by size and at least every few seconds."""

    def __init__(
        self,
        database: Database,
        counts: IngestCounts,
        *,
        models: ModelPair,
        run: ActiveRun,
        options: IngestOptions,
        flag_thresholds: FlagThresholds,
    ) -> None:
        self.database = database
        self.flag_thresholds = flag_thresholds
        self.counts = counts
        self.models = models
        self.run = run
        self.options = options
        self.results: list[ResultRow] = []
        self.failures: list[InferenceFailure] = []
        self.last_flush = time.monotonic()

    def add(self, outcome: ShardOutcome) -> None:
        self.results.extend(outcome.results)
        self.failures.extend(outcome.failures)
        self.counts.results += len(outcome.results)
        self.counts.inference_failures += len(outcome.failures)
        pending = len(self.results) + len(self.failures)
        if pending >= self.options.write_batch or time.monotonic() - self.last_flush >= _FLUSH_SECONDS:
            self.flush()

    def flush_if_due(self) -> None:
        if time.monotonic() - self.last_flush >= _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.results or self.failures:
            self.run.keep_alive()
            write_results(
                self.database,
                self.results,
                self.failures,
                classifier_id=self.models.classifier.id,
                regressor_id=self.models.regressor.id,
                run_id=self.run.id,
                flag_thresholds=self.flag_thresholds,
                replace=self.options.rerun,
            )
            self.results, self.failures = [], []
        self.last_flush = time.monotonic()
