"""Every kopf handler of the operator, on one screen: the whole control surface of sessionpipe.

Registrations only; each use case lives in its own module:

- :mod:`.reconcile`: a SessionProcessor is reconciled on create, resume and spec update into one
  CronJob, or marked ``InvalidSpec``; :mod:`.writers` keeps one writer per database.
- :mod:`.run_now`: the ``sessionpipe.io/run-now`` annotation starts a Job beside the schedule.
- :mod:`.outcomes`: a finished Job becomes a run in the status.
- :mod:`.drift`: a CronJob edited or deleted by someone else is put back; its status is mirrored.
- :mod:`.stale`: one operator-wide loop re-evaluates time-based conditions.
- :mod:`.progress`: one operator-wide loop shows running Jobs' progress (read from their Lease).
- :mod:`.status_writer`: every status write is a read-modify-write that retries on conflicts.

The CR never carries a finalizer: there is no deletion handler, no daemon and no kopf timer (kopf
adds a finalizer for each of those). Deleting the CR deletes the CronJob and its Jobs through their
ownerReferences. Job outcomes arrive through *event* handlers on Jobs and CronJobs labelled by us:
event handlers write nothing onto the objects they watch.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kopf

from sessionpipe_contract import (
    ANNOTATION_RUN_NOW,
    API_GROUP,
    API_VERSION,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    PLURAL,
)
from sessionpipe_operator import drift, metrics, outcomes, periodic, progress, reconcile, run_now, stale, writers
from sessionpipe_operator.k8s import ApiError, KubeClient
from sessionpipe_operator.objects import SessionProcessor
from sessionpipe_operator.settings import OperatorSettings
from sessionpipe_operator.state import Key, OperatorState, index_value, plain

RUN_NOW_FIELD = ("metadata", "annotations", ANNOTATION_RUN_NOW)
#: Once kopf has stopped its tasks, how long the process may take to end. Python joins the handler
#: threads at exit, and one blocked in a request to an unresponsive API server would hold the exit
#: for the request timeout; a pod must be gone well within its grace period (30 s by default).
EXIT_AFTER_CLEANUP_SECONDS = 4.0


def operator_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """Kopf's own settings: annotations for its bookkeeping (the status schema has no room for it),
    no Events for handler log lines (only the Events we post on purpose), standalone."""
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.sessionpipe.io")
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.sessionpipe.io", key="last-handled-configuration"
    )
    kopf_settings.persistence.finalizer = "kopf.sessionpipe.io/finalizer"  # never added: no deletion handlers
    kopf_settings.posting.loggers = False
    kopf_settings.posting.level = logging.INFO
    kopf_settings.peering.standalone = True
    # Limited to named namespaces, the operator may not list namespaces (RBAC cannot grant a list
    # of some namespaces only); kopf's scan would retry that for a minute at start-up before it
    # falls back to the names it was given, so nothing would be reconciled meanwhile.
    kopf_settings.scanning.disabled = bool(settings.namespaces)
    kopf_settings.execution.max_workers = 8
    kopf_settings.watching.connect_timeout = 10
    # Long watch requests: an idle operator keeps its streams open instead of re-listing.
    kopf_settings.watching.server_timeout = 600
    kopf_settings.watching.client_timeout = 660
    return kopf_settings


def _state(memo: Any) -> OperatorState:
    state: OperatorState = memo.state
    return state


def _namespaced(namespace: str | None) -> str:
    if not namespace:
        raise kopf.PermanentError("SessionProcessors, Jobs and CronJobs are namespaced")
    return namespace


@contextmanager
def _retried_on_api_errors(handler: str, *, count_temporary: bool = False) -> Iterator[None]:
    """An API server failure goes back to kopf as a retry in 5 s, counted in the error metric."""
    try:
        yield
    except kopf.TemporaryError:
        if count_temporary:
            metrics.RECONCILE_ERRORS.labels(handler=handler).inc()
        raise
    except ApiError as error:
        metrics.RECONCILE_ERRORS.labels(handler=handler).inc()
        raise kopf.TemporaryError(f"the API server failed: {error}", delay=5) from error


# --- start-up and shutdown -------------------------------------------------------------------------
@kopf.on.login(id="login")
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The pod's service account inside a cluster, else the current kubeconfig.

    Through the official client, as :class:`KubeClient` does: in a pod it finds the API server from
    ``KUBERNETES_SERVICE_HOST``/``_PORT`` (as client-go does), not from cluster DNS.
    """
    return kopf.login_via_client(**kwargs)


@kopf.on.startup(id="startup")
async def startup(memo: Any, **kwargs: Any) -> None:
    """Create the API client and start the operator-wide loops: the stale check and running Jobs' progress."""
    state = _state(memo)
    state.kube = KubeClient.from_environment(on_request=metrics.count_request)
    state.bodies = kwargs["sessionprocessor_bodies"]
    state.stale_task = asyncio.create_task(
        periodic.every(stale.STALE_CHECK_SECONDS, stale.check_time_based_conditions, state, "stale-check"),
        name="sessionpipe-stale-check",
    )
    state.progress_task = asyncio.create_task(
        periodic.every(progress.PROGRESS_CHECK_SECONDS, progress.refresh_progress, state, "progress"),
        name="sessionpipe-progress",
    )


def _exit_now() -> None:
    logging.shutdown()
    os._exit(0)  # every write already either reached the API server or did not: nothing to lose


@kopf.on.cleanup(id="cleanup")
async def cleanup(memo: Any, **_: Any) -> None:
    watchdog = threading.Timer(EXIT_AFTER_CLEANUP_SECONDS, _exit_now)
    watchdog.daemon = True
    watchdog.start()
    state = _state(memo)
    for task in (state.stale_task, state.progress_task):
        if task is not None:
            task.cancel()
    if state.kube is not None:
        state.kube.close()


@kopf.on.probe(id="processors")
def processors_reconciled(memo: Any, **_: Any) -> int:
    """Liveness detail: how many processors currently have a valid, applied CronJob."""
    return len(_state(memo).desired)


# --- indexes ----------------------------------------------------------------------------------------
@kopf.index(API_GROUP, API_VERSION, PLURAL, id="sessionprocessor_bodies")
def sessionprocessor_bodies(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, **_: Any
) -> dict[Key, dict[str, Any]]:
    """Every SessionProcessor's spec and status, so time-based checks need no API reads."""
    metadata = {field: meta.get(field) for field in ("uid", "creationTimestamp") if meta.get(field) is not None}
    return {
        (namespace or "", name): {
            "spec": copy.deepcopy(dict(spec)),
            "status": copy.deepcopy(dict(status)),
            "metadata": metadata,
        }
    }


@kopf.index(API_GROUP, API_VERSION, PLURAL, id="sessionprocessors_by_database")
def sessionprocessors_by_database(
    namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[writers.WriterKey, writers.Holder]:
    """Who writes which database with which processor: (namespace, processor, database key)."""
    return writers.index_entry(namespace or "", name, str(meta.get("creationTimestamp") or ""), spec)


# --- the SessionProcessor -> CronJob reconciliation --------------------------------------------------
@kopf.on.resume(API_GROUP, API_VERSION, PLURAL, id="reconcile")
@kopf.on.create(API_GROUP, API_VERSION, PLURAL, id="reconcile")
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, id="reconcile", field="spec")
def reconcile_handler(
    namespace: str | None, name: str, body: kopf.Body, memo: Any, logger: kopf.Logger, old: Any, **kwargs: Any
) -> None:
    """Render the CronJob for this spec and make the cluster hold exactly it."""
    state, namespace = _state(memo), _namespaced(namespace)
    by_database = kwargs["sessionprocessors_by_database"]
    with _retried_on_api_errors("reconcile", count_temporary=True):
        reconcile.reconcile_processor(state, SessionProcessor.parse(plain(body)), by_database, logger)
    if isinstance(old, Mapping):  # a processor that moved to another database may free a refused rival
        reconcile.release_database(state, namespace, name, old, by_database, logger)


@kopf.on.event(API_GROUP, API_VERSION, PLURAL, id="freed-database")
def sessionprocessor_deleted(
    type: str, body: kopf.Body, namespace: str | None, name: str, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """When a processor is deleted, a rival refused for writing the same database may run now."""
    if type != "DELETED":
        return
    state, namespace = _state(memo), _namespaced(namespace)
    state.forget((namespace, name))
    by_database = kwargs["sessionprocessors_by_database"]
    reconcile.release_database(state, namespace, name, body.get("spec") or {}, by_database, logger)


# --- run-now --------------------------------------------------------------------------------------
@kopf.on.create(API_GROUP, API_VERSION, PLURAL, id="run-now-on-create", field=RUN_NOW_FIELD)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, id="run-now", field=RUN_NOW_FIELD)
def run_now_handler(
    namespace: str | None, name: str, body: kopf.Body, new: Any, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    """A new ``sessionpipe.io/run-now`` token: start one Job now, unless one is already running."""
    token = str(new or "").strip()
    if not token:
        return
    _namespaced(namespace)
    with _retried_on_api_errors("run-now"):
        run_now.serve_run_now(_state(memo), SessionProcessor.parse(plain(body)), token, logger)


# --- Job outcomes -----------------------------------------------------------------------------------
@kopf.on.event("batch", "v1", "jobs", labels={LABEL_INSTANCE: kopf.PRESENT}, id="job-outcome")
def job_changed(
    type: str, body: kopf.Body, namespace: str | None, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A finished Job of ours: read the runner's summary and record the run in the CR's status."""
    if type == "DELETED":
        return
    namespace = _namespaced(namespace)
    job = plain(body)
    known = index_value(kwargs["sessionprocessor_bodies"], (namespace, job["metadata"]["labels"][LABEL_INSTANCE]))
    if not outcomes.needs_recording(job, known):
        return
    with _retried_on_api_errors("job-outcome"):
        outcomes.record_finished_job(_state(memo), namespace, job, logger)


# --- CronJob drift and status mirror ----------------------------------------------------------------
@kopf.on.event(
    "batch", "v1", "cronjobs", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_INSTANCE: kopf.PRESENT}, id="cronjob"
)
def cronjob_changed(
    type: str, body: kopf.Body, namespace: str | None, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """Put back a CronJob someone deleted or edited, and mirror its schedule state into the CR."""
    state, namespace = _state(memo), _namespaced(namespace)
    cronjob = plain(body)
    key = (namespace, cronjob["metadata"]["labels"][LABEL_INSTANCE])
    with _retried_on_api_errors("cronjob"):
        if type == "DELETED":
            drift.restore_deleted_cronjob(state, key, logger)
            return
        drift.repair_drift(state, key, cronjob, logger)
        drift.mirror_cronjob_status(state, key, cronjob, index_value(kwargs["sessionprocessor_bodies"], key))
