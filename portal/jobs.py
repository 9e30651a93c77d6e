"""The job queue: an outbox table in the orders database, claimed under a lease.

- `enqueue` runs inside the caller's transaction, so a job exists iff the state change that needs
  it committed. A dedupe key makes a second enqueue of the same purpose a no-op.
- Claiming is a compare-and-set on the lease (`locked_until`), with `FOR UPDATE SKIP LOCKED` on
  PostgreSQL so many workers on many hosts never take the same job. A worker that dies mid-job
  (even SIGKILL) loses nothing: its lease runs out and another worker takes the job. A worker
  re-checks its lease just before it starts a job and keeps renewing it while the job runs, so a
  slow platform call never lets a second worker run the same job alongside.
- Transient failures retry with exponential back-off and jitter; permanent ones, or too many
  attempts, stop the job and call the kind's `give_up` (which alerts an operator).

The queue does not know the kinds of job: the table of kinds (name -> `Kind`) is listed in
`portal.job_kinds` and held by the app's services (`services.job_kinds`), which every function
that runs jobs is given.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from portal.db import db
from portal.http import UpstreamError
from portal.models import Job, JobState, utcnow

log = logging.getLogger("portal.jobs")


class PermanentJobError(Exception):
    """The job cannot succeed by trying again."""


@dataclass
class Kind:
    """One kind of job: what runs it, what happens when it gives up, and (for periodic work)
    how often it comes back."""

    run: object  # run(services, job) -> None
    give_up: object | None = None  # give_up(services, job, error: str) -> None
    every_seconds: float | None = None  # periodic jobs reschedule themselves


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def enqueue(session, kind: str, dedupe_key: str, *, order_id=None, payload=None, run_at=None):
    """Queue a job in the caller's transaction; a second job with the same key is ignored."""
    values = {
        "kind": kind,
        "dedupe_key": dedupe_key,
        "order_id": order_id,
        "payload": payload or {},
        "state": JobState.QUEUED,
        "attempts": 0,
        "run_at": run_at or utcnow(),
        "created_at": utcnow(),
        "updated_at": utcnow(),
    }
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(
        dialect.insert(Job).values(**values).on_conflict_do_nothing(index_elements=["dedupe_key"])
    )


def requeue(session, dedupe_key: str, *, keep_queued_attempts: bool = False) -> bool:
    """Make a job due now, in the caller's transaction, with a fresh set of attempts (with
    `keep_queued_attempts`, a job still queued keeps its count and only one that had ended
    starts again from 0). A job a worker holds right now is left alone: its outcome is about to
    land. Returns whether the job was requeued."""
    now = utcnow()
    attempts = (
        case((Job.state == JobState.QUEUED, Job.attempts), else_=0) if keep_queued_attempts else 0
    )
    result = session.execute(
        update(Job)
        .where(
            Job.dedupe_key == dedupe_key,
            or_(Job.locked_until.is_(None), Job.locked_until < now),
        )
        .values(
            state=JobState.QUEUED,
            run_at=now,
            attempts=attempts,
            last_error=None,
            locked_by=None,
            locked_until=None,
            updated_at=now,
        )
    )
    return result.rowcount == 1


def _claimable(now):
    return (Job.state == JobState.QUEUED) & or_(Job.locked_until.is_(None), Job.locked_until < now)


def _lease(settings) -> timedelta:
    return timedelta(seconds=settings.job_lease_seconds)


def claim_due(settings, worker_id: str, limit: int = 10) -> list[Job]:
    now = utcnow()
    values = {
        "locked_by": worker_id,
        "locked_until": now + _lease(settings),
        "attempts": Job.attempts + 1,
        "updated_at": now,
    }
    query = (
        select(Job.id)
        .where(_claimable(now), Job.run_at <= now)
        .order_by(Job.run_at, Job.id)
        .limit(limit)
    )
    claimed: list[int] = []
    if db.is_postgres:
        with db.transaction() as session:
            ids = session.scalars(query.with_for_update(skip_locked=True)).all()
            if ids:
                session.execute(update(Job).where(Job.id.in_(ids)).values(**values))
                claimed = list(ids)
    else:
        # SQLite has one writer at a time: each claim is its own compare-and-set.
        with db.reader() as session:
            ids = session.scalars(query).all()
        for job_id in ids:
            with db.transaction() as session:
                result = session.execute(
                    update(Job).where(Job.id == job_id, _claimable(now)).values(**values)
                )
                if result.rowcount == 1:
                    claimed.append(job_id)
    if not claimed:
        return []
    with db.reader() as session:
        return list(session.scalars(select(Job).where(Job.id.in_(claimed)).order_by(Job.id)))


def claim_one(settings, job_id: int, worker_id: str) -> Job | None:
    now = utcnow()
    with db.transaction() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, _claimable(now))
            .values(
                locked_by=worker_id,
                locked_until=now + _lease(settings),
                attempts=Job.attempts + 1,
                updated_at=now,
            )
        )
        if result.rowcount != 1:
            return None
    with db.reader() as session:
        return session.get(Job, job_id)


def renew_lease(settings, job_id: int, worker_id: str) -> bool:
    """Extend our lease; False if another worker took the job (our lease had run out)."""
    now = utcnow()
    with db.transaction() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.locked_by == worker_id, Job.state == JobState.QUEUED)
            .values(locked_until=now + _lease(settings), updated_at=now)
        )
        return result.rowcount == 1


class _Heartbeat:
    """Keeps renewing a job's lease while it runs, so a slow platform call never lets a second
    worker take the same job. A worker that dies (even SIGKILL) stops beating: the lease runs out
    and the job is taken again."""

    def __init__(self, settings, job_id: int, worker_id: str):
        self.settings = settings
        self.job_id = job_id
        self.worker_id = worker_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"lease-{job_id}")

    def _beat(self) -> None:
        interval = max(self.settings.job_lease_seconds / 3, 0.2)
        while not self.stopped.wait(interval):
            try:
                if not renew_lease(self.settings, self.job_id, self.worker_id):
                    return
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.warning("could not renew the lease of job %s", self.job_id, exc_info=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_exc):
        self.stopped.set()
        self.thread.join(5)


def _finish(job: Job, worker_id: str, **values) -> bool:
    """Release our lease with a new state; False if the lease was lost to another worker."""
    with db.transaction() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.locked_by == worker_id)
            .values(locked_by=None, locked_until=None, updated_at=utcnow(), **values)
        )
        return result.rowcount == 1


def backoff_seconds(settings, attempts: int) -> float:
    base = settings.retry_base_seconds
    delay = min(settings.retry_max_seconds, base * (2 ** max(attempts - 1, 0)))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


def run_job(services, job: Job, worker_id: str) -> str:
    """Run one claimed job to an outcome: "done", "retry", "dead", or "lost" when our lease ran
    out before we started and another worker has taken the job."""
    kind = services.job_kinds.get(job.kind)
    if kind is None:
        _finish(job, worker_id, state=JobState.DEAD, last_error=f"unknown job kind {job.kind}")
        return "dead"
    # A job claimed a while ago (in a batch, or by a worker that was paused) may already belong to
    # another worker: check, and take a fresh lease, before touching the platform.
    if not renew_lease(services.settings, job.id, worker_id):
        log.warning("job %s (%s): lease lost before it ran; skipped", job.id, job.kind)
        return "lost"
    started = time.monotonic()
    try:
        with _Heartbeat(services.settings, job.id, worker_id):
            kind.run(services, job)
    except Exception as exc:  # noqa: BLE001 - the queue owns every failure
        return _failed(services, kind, job, worker_id, exc)
    if kind.every_seconds is not None:
        _finish(
            job,
            worker_id,
            attempts=0,
            last_error=None,
            run_at=utcnow() + timedelta(seconds=kind.every_seconds),
        )
    else:
        _finish(job, worker_id, state=JobState.DONE, last_error=None)
    log.info(
        "job %s (%s) done in %d ms",
        job.id,
        job.kind,
        (time.monotonic() - started) * 1000,
        extra={"order_id": job.order_id},
    )
    return "done"


def _failed(services, kind: Kind, job: Job, worker_id: str, exc: Exception) -> str:
    settings = services.settings
    transient = isinstance(exc, UpstreamError) and exc.transient
    if not isinstance(exc, UpstreamError | PermanentJobError):
        log.exception("job %s (%s) crashed", job.id, job.kind, extra={"order_id": job.order_id})
        transient = True  # a bug or a database hiccup: try again, then give up loudly
    error = str(exc) or type(exc).__name__
    if kind.every_seconds is not None:
        # Periodic work never dies: it waits for its next turn.
        _finish(
            job,
            worker_id,
            attempts=0,
            last_error=error,
            run_at=utcnow() + timedelta(seconds=kind.every_seconds),
        )
        log.warning("periodic job %s failed: %s", job.kind, error)
        return "retry"
    if transient and job.attempts < settings.retry_max_attempts:
        delay = backoff_seconds(settings, job.attempts)
        if getattr(exc, "timeout", False):
            # The timed-out call may still be in flight at the platform: let it land (or fail)
            # before the retry looks at the platform's state, so "already done" is seen.
            delay = max(delay, 2 * settings.http_read_timeout)
        _finish(job, worker_id, run_at=utcnow() + timedelta(seconds=delay), last_error=error)
        log.warning(
            "job %s (%s) attempt %d failed: %s; next try in %.1f s",
            job.id,
            job.kind,
            job.attempts,
            error,
            delay,
            extra={"order_id": job.order_id},
        )
        return "retry"
    # Give up (the order moves to its failed state and an operator is alerted) while the job is
    # still ours, and only then mark it dead: if giving up fails half-way (the database went away),
    # the lease runs out, the job comes back, and giving up is tried again, so a paid order can
    # never sit with a dead job and no alert.
    if not renew_lease(settings, job.id, worker_id):
        log.warning("job %s (%s): lease lost; the new holder decides", job.id, job.kind)
        return "lost"
    if kind.give_up:
        kind.give_up(services, job, error)
    _finish(job, worker_id, state=JobState.DEAD, last_error=error)
    return "dead"


_inline_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="inline-job")


def job_state(dedupe_key: str) -> Job | None:
    with db.reader() as session:
        return session.scalar(select(Job).where(Job.dedupe_key == dedupe_key))


def run_inline(services, dedupe_key: str, budget_seconds: float, *, only_if_due=False) -> None:
    """Run a queued job now, from a request, waiting at most `budget_seconds` for it.

    The job runs on a background thread under our lease, so a slow platform delays the page by
    the budget at most; the job finishes (or retries later) on its own either way. If a worker
    already holds it, we just wait for its outcome.
    """
    deadline = time.monotonic() + budget_seconds
    job = job_state(dedupe_key)
    if job is None or job.state != JobState.QUEUED:
        return
    if only_if_due and job.run_at > utcnow():
        return
    worker_id = worker_name()
    claimed = claim_one(services.settings, job.id, worker_id)
    if claimed is not None:
        future = _inline_pool.submit(run_job, services, claimed, worker_id)
        try:
            future.result(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            return
        return
    while time.monotonic() < deadline:
        time.sleep(0.1)
        current = job_state(dedupe_key)
        if current is None or current.state != JobState.QUEUED or current.locked_by is None:
            return


def ensure_periodic_jobs(kinds: dict[str, Kind]) -> None:
    """Queue each periodic kind's job once (a no-op for a kind already queued)."""
    with db.transaction() as session:
        for name, kind in kinds.items():
            if kind.every_seconds is not None:
                enqueue(session, name, f"periodic:{name}")


class Worker:
    """`flask portal worker`: claims due jobs and runs them until stopped (SIGTERM/SIGINT)."""

    def __init__(self, services, *, batch: int = 1, poll_seconds: float = 1.0):
        self.services = services
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.error_pause_seconds = 5.0
        self.stopping = threading.Event()
        self.worker_id = worker_name()

    def install_signal_handlers(self) -> None:
        def stop(_signum, _frame):
            log.info("worker %s stopping after the current job", self.worker_id)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self, *, once: bool = False) -> dict[str, int]:
        """Claim and run due jobs. One job at a time by default: a claimed job never waits behind
        another one while its lease runs, and a stopping worker leaves nothing claimed."""
        counts = {"done": 0, "retry": 0, "dead": 0, "lost": 0}
        periodic_ready = False
        while not self.stopping.is_set():
            try:
                if not periodic_ready:
                    ensure_periodic_jobs(self.services.job_kinds)
                    periodic_ready = True
                jobs = claim_due(self.services.settings, self.worker_id, self.batch)
                for job in jobs:
                    counts[run_job(self.services, job, self.worker_id)] += 1
                    if self.stopping.is_set():
                        break
            except Exception:
                if once:
                    raise
                # The database went away (or a bug): a long-running worker waits and tries again;
                # any job it held comes back when its lease runs out.
                log.exception("worker %s: could not claim or finish jobs", self.worker_id)
                self.stopping.wait(self.error_pause_seconds)
                continue
            if not jobs:
                if once:
                    break
                self.stopping.wait(self.poll_seconds)
        return counts
