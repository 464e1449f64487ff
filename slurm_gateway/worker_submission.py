"""Submitting workers: the ``do_start_worker`` hook, job arrays within SLURM's limits, and
the workers held in the gateway while SLURM refuses more of the user's jobs.

Workers started together reach :meth:`WorkerSubmission._submit_workers` as one batch (at
most ``MaxArraySize - 1``, see ``batching``). A batch SLURM refuses for a submit limit is
halved until a part fits (``submit_limits.SubmitPlan``); the workers that do not fit even as
one job are *held*: their record says ``held`` instead of a job id, they count as alive and
never time out, and they are submitted first (before any newer worker of their cluster) when
jobs of their user end, when anyone's job ends if the limit is a shared one
(``submit_limits.is_shared_limit``), and every ``held_retry_period`` seconds whatever the
limit. The cluster's report tells the user why (``cluster_reports``). Held workers SLURM
then refuses for another reason fail with it, as any worker whose submission fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from dask_gateway_server.backends.db_base import Cluster, JobStatus, Worker

from .jobs import SlurmError
from .submit_limits import (
    RELEASE_AGAIN_GAP,
    SHARED_RETRY_GAP,
    Refusal,
    SubmitPlan,
    classify_refusal,
    held_reason,
    is_held,
    is_shared_limit,
    limit_name,
)


def held_workers(cluster: Cluster) -> list[Worker]:
    """A cluster's workers waiting in the gateway, oldest first."""
    return [
        w
        for w in cluster.workers.values()
        if w.target == JobStatus.RUNNING and w.status < JobStatus.STOPPED and is_held(w.state)
    ]


class WorkerSubmission:
    """The backend's worker submission. The backend provides ``_worker_submissions`` (a
    ``Coalescer`` of :meth:`_submit_workers`), ``_cancellations``, ``_job_script``,
    ``_submit``, ``_track``, ``_forget``, ``_record``, ``record_worker_failure``, ``db``,
    ``queue``, ``task_pool``, ``log``, ``_releasing`` and ``_release_again`` (sets) and
    ``_shared_retried`` (a dict)."""

    async def do_start_worker(self, worker: Worker) -> AsyncIterator[dict]:
        # Workers started together (scale(n), adaptive growth) leave as one job array.
        job_id = await self._worker_submissions.add(worker.cluster.name, worker)
        yield {"job_id": job_id} if job_id else {"held": True}

    async def _submit_workers(self, cluster_name: str, workers: list) -> list[str | None]:
        """Job ids of a batch of one cluster's workers (None for each worker held)."""
        cluster = workers[0].cluster
        if held_workers(cluster):
            # Behind the workers already waiting: they go first, as SLURM allows.
            self.release_held_soon(cluster.username)
            return [None] * len(workers)
        try:
            job_ids = await self._submit_within_limits(cluster, workers)
        except Exception as exc:
            self.record_worker_failure(cluster, f"{len(workers)} worker(s) not submitted: {exc}")
            raise
        submitted = [j for j in job_ids if j]
        if submitted:
            self.log.info(
                "Cluster %s: %d worker(s) submitted as job %s",
                cluster.name,
                len(submitted),
                " ".join(sorted({j.split("_")[0] for j in submitted})),
            )
        return job_ids

    async def _submit_within_limits(self, cluster: Cluster, workers: list) -> list[str | None]:
        """Submit as many of ``workers`` as SLURM takes, in parts that fit; None for each
        worker left over. Raises if SLURM refuses the first part for another reason."""
        plan = SubmitPlan(len(workers))
        job_ids: list[str | None] = []
        limit = None
        while not plan.done:
            part = workers[len(job_ids) : len(job_ids) + plan.next_size()]
            try:
                job_ids += await self._submit_worker_jobs(cluster, part)
            except SlurmError as exc:
                refusal = classify_refusal(str(exc))
                if refusal is Refusal.OTHER and not job_ids:
                    raise
                if refusal is not Refusal.ARRAY_TOO_BIG:
                    limit = limit_name(str(exc)) if refusal is Refusal.SUBMIT_LIMIT else str(exc)
                    if refusal is Refusal.OTHER:
                        break  # the rest is held and tried again later
                self.log.info(
                    "Cluster %s: SLURM refused %d worker(s): %s", cluster.name, len(part), exc
                )
                plan.refused()
            else:
                plan.accepted(len(part))
        if plan.remaining:
            if limit is None:
                raise SlurmError(f"SLURM refused even one worker job of cluster {cluster.name}")
            limit = held_reason(limit)
            self._record(cluster, held_because=limit)
            self.log.info(
                "Cluster %s: %d worker(s) held in the gateway (%s)",
                cluster.name,
                plan.remaining,
                limit,
            )
        return job_ids + [None] * (len(workers) - len(job_ids))

    async def _submit_worker_jobs(self, cluster: Cluster, workers: list) -> list[str]:
        script = self._job_script(cluster, "worker", cluster.state["log_directory"], workers)
        job_ids = await self._submit(cluster, script, len(workers))
        # Tracked at once, so that the orphan check never takes them for strays.
        for worker, job_id in zip(workers, job_ids, strict=True):
            self._track(job_id, cluster, worker)
        self.watch_submitted(job_ids)
        return job_ids

    def _cancel_unclaimed(self, cluster_name: str, job_id: str | None):
        # The worker's start was abandoned (timed out) while its job was being submitted.
        cluster = self.db.get_cluster(cluster_name)
        if cluster is not None and job_id:
            self.log.info("Cancelling job %s of an abandoned worker start", job_id)
            self.task_pool.spawn(self._cancellations.add(cluster.username, job_id))

    # -- held workers ------------------------------------------------------------------------

    def _fail_held(self, cluster: Cluster, held: list, exc: SlurmError) -> None:
        """SLURM refused held workers for another reason than a submit limit (fewer would
        be refused too): they fail with that reason instead of waiting forever. One refused
        retry counts once against the cluster's failure limit, however many it held (a
        passing slurmctld hiccup must not fail the cluster)."""
        held = [w for w in held if w.target == JobStatus.RUNNING and w.status < JobStatus.STOPPED]
        if not held:
            return
        self.record_worker_failure(cluster, f"{len(held)} held worker(s) not submitted: {exc}")
        self.db.update_workers([(w, {"target": JobStatus.FAILED}) for w in held])
        cluster.worker_start_failure_count += 1
        for worker in held:
            self.queue.put(worker)
        self._record(cluster, held_because=None)

    def release_held_soon(self, username: str) -> None:
        """Submit the user's held workers in the background (their jobs ended or were
        cancelled, or a timer). If a release of hers is under way, another follows it: the
        places freed now may come after its last refused submission."""
        if username in self._releasing:
            self._release_again.add(username)
        else:
            self._releasing.add(username)
            self.task_pool.spawn(self._release_held(username))

    async def release_all_held(self) -> None:
        """The retry timer (``held_retry_period``): every user with held workers, whatever
        the limit (one shared with other users is freed by jobs the gateway may not see)."""
        for username in {c.username for c in self.db.active_clusters() if held_workers(c)}:
            self.release_held_soon(username)

    def release_shared_held_soon(self) -> None:
        """Some job ended: users whose workers a shared limit holds may fit now (each at
        most every ``SHARED_RETRY_GAP`` seconds: a refused retry costs a few sbatch calls)."""
        now = time.monotonic()
        for cluster in self.db.active_clusters():
            limit = cluster.state.get("held_because")
            user = cluster.username
            if (
                limit
                and is_shared_limit(limit)
                and now >= self._shared_retried.get(user, -SHARED_RETRY_GAP) + SHARED_RETRY_GAP
                and held_workers(cluster)
            ):
                self._shared_retried[user] = now
                self.release_held_soon(user)

    async def _release_held(self, username: str) -> None:
        # Again if places were freed while it ran (they may have come after its last refused
        # submission), at most once a RELEASE_AGAIN_GAP: a user who scales up and down
        # without end costs one release a gap, not one after the other.
        try:
            await self._submit_all_held(username)
            while username in self._release_again:
                self._release_again.discard(username)
                await asyncio.sleep(RELEASE_AGAIN_GAP)
                await self._submit_all_held(username)
        except Exception:
            self.log.warning("Could not submit held workers of user %s", username, exc_info=True)
        finally:
            self._releasing.discard(username)
            self._release_again.discard(username)

    async def _submit_all_held(self, username: str) -> None:
        # Until none are left: workers held while this ran (behind the ones it submits)
        # would otherwise wait for the next trigger.
        while held := [
            (c, workers)
            for c in self.db.active_clusters()
            if c.username == username and (workers := held_workers(c))
        ]:
            for cluster, workers in held:
                if not await self._submit_held(cluster, workers):
                    return  # the user's limit is reached again

    async def _submit_held(self, cluster: Cluster, held: list) -> bool:
        """Submit a cluster's held workers; whether they all went out (or failed)."""
        try:
            job_ids = await self._submit_within_limits(cluster, held)
        except SlurmError as exc:
            self._fail_held(cluster, held, exc)
            return True
        abandoned = []
        for worker, job_id in zip(held, job_ids, strict=True):
            if job_id is None:
                continue
            if worker.target != JobStatus.RUNNING or worker.status >= JobStatus.STOPPED:
                abandoned.append(job_id)  # stopped while its job was being submitted
            else:
                self.db.update_worker(worker, state={"job_id": job_id})
        for job_id in abandoned:
            self.task_pool.spawn(self._cancellations.add(cluster.username, job_id))
        self._forget(abandoned)
        sent = len(held) - job_ids.count(None)
        if sent:
            self.log.info("Cluster %s: %d held worker(s) submitted", cluster.name, sent)
        if None in job_ids:
            return False
        self._record(cluster, held_because=None)
        return True
