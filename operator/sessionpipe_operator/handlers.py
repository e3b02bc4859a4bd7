"""Every kopf handler of the operator, on one screen: the whole control surface of sessionpipe.

What reconciles what, and why this way:

- A SessionProcessor is reconciled on create, resume and spec update into one CronJob, rendered by
  :func:`render.build_cronjob` and written with server-side apply only when missing or drifted.
- The CR never carries a finalizer: there is no deletion handler, no daemon and no kopf timer (kopf
  adds a finalizer for each of those). Deleting the CR deletes the CronJob and its Jobs through
  their ownerReferences; the stale check runs as one operator-wide loop over an in-memory index.
- Job outcomes arrive through *event* handlers on Jobs and CronJobs labelled by us: event handlers
  write nothing onto the objects they watch.
- Run-now creates a Job from the CronJob's template, owned by the CronJob, and registers it in the
  CronJob's ``status.active``: the CronJob controller's ``Forbid`` policy only counts the Jobs in
  that list, so this is what stops a scheduled tick from starting a second Job beside it.
- A spec that cannot work sets ``InvalidSpec`` and posts one Event; the handler then returns
  normally, so kopf never retries it. A changed spec is reconciled afresh.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import pydantic

from sessionpipe_contract import (
    ANNOTATION_RUN_NOW,
    ANNOTATION_RUN_NOW_TOKEN,
    API_GROUP,
    API_VERSION,
    KIND,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_PROCESSOR,
    MANAGED_BY,
    OUTCOME_LEASE_NOT_ACQUIRED,
    PLURAL,
)
from sessionpipe_operator import metrics, policy, render, schedule
from sessionpipe_operator import status as status_rules
from sessionpipe_operator.k8s import ApiError, KubeClient, cronjob_path, job_path, pod_path, sessionprocessor_path
from sessionpipe_operator.models import SessionProcessorSpec
from sessionpipe_operator.settings import OperatorSettings

#: How often the operator-wide loop re-evaluates time-based conditions (Stale). The shortest
#: schedule is one minute and Stale needs two periods, so a minute is precise enough.
STALE_CHECK_SECONDS = 60.0
#: Attempts of one optimistic read-modify-write before giving the event back to kopf.
WRITE_ATTEMPTS = 6
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONDITION_INVALID_SPEC = "InvalidSpec"
RUN_NOW_FIELD = ("metadata", "annotations", ANNOTATION_RUN_NOW)
API_VERSION_FULL = f"{API_GROUP}/{API_VERSION}"

Key = tuple[str, str]  # (namespace, SessionProcessor name)


# --- state shared by the handlers -----------------------------------------------------------------
@dataclass
class OperatorState:
    """What the handlers share: settings, the API client, and what was last applied per processor.

    Kopf shallow-copies the memo for every resource; this one object is what the copies share.
    Handlers run in kopf's thread pool, so mutation goes through the locks.
    """

    settings: OperatorSettings
    kube: KubeClient | None = None
    #: The CronJob last rendered for each valid processor; absent while a spec is invalid.
    desired: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: resourceVersion our own last apply produced, so its watch echo is not taken for drift.
    applied_versions: dict[Key, str] = field(default_factory=dict)
    bodies: Any = None  # the kopf index of SessionProcessor bodies, set at start-up
    stale_task: asyncio.Task[None] | None = None
    _locks: dict[Key, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @property
    def client(self) -> KubeClient:
        if self.kube is None:
            raise kopf.TemporaryError("the operator's API client is not ready yet", delay=1)
        return self.kube


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
    """Create the API client and start the operator-wide stale check."""
    state = _state(memo)
    state.kube = KubeClient.from_environment(on_request=metrics.count_request)
    state.bodies = kwargs["sessionprocessor_bodies"]
    state.stale_task = asyncio.create_task(_stale_loop(state), name="sessionpipe-stale-check")


#: Once kopf has stopped its tasks, how long the process may take to end. Python joins the handler
#: threads at exit, and one blocked in a request to an unresponsive API server would hold the exit
#: for the request timeout; a pod must be gone well within its grace period (30 s by default).
EXIT_AFTER_CLEANUP_SECONDS = 4.0


def _exit_now() -> None:
    logging.shutdown()
    os._exit(0)  # every write already either reached the API server or did not: nothing to lose


@kopf.on.cleanup(id="cleanup")
async def cleanup(memo: Any, **_: Any) -> None:
    watchdog = threading.Timer(EXIT_AFTER_CLEANUP_SECONDS, _exit_now)
    watchdog.daemon = True
    watchdog.start()
    state = _state(memo)
    if state.stale_task is not None:
        state.stale_task.cancel()
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
    return {
        (namespace or "", name): {
            "spec": copy.deepcopy(dict(spec)),
            "status": copy.deepcopy(dict(status)),
            "metadata": {"uid": meta.get("uid"), "creationTimestamp": meta.get("creationTimestamp")},
        }
    }


@kopf.index(API_GROUP, API_VERSION, PLURAL, id="sessionprocessors_by_database")
def sessionprocessors_by_database(
    namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[tuple[str, str, str], tuple[str, str]]:
    """Who writes which database with which processor: (namespace, processor, database key)."""
    parsed = _parse_spec(spec)
    if parsed is None:
        return {}
    return {_writer_key(namespace or "", parsed): (str(meta.get("creationTimestamp") or ""), name)}


# --- the SessionProcessor -> CronJob reconciliation --------------------------------------------------
@kopf.on.resume(API_GROUP, API_VERSION, PLURAL, id="reconcile")
@kopf.on.create(API_GROUP, API_VERSION, PLURAL, id="reconcile")
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, id="reconcile", field="spec")
def reconcile(
    namespace: str | None, name: str, body: kopf.Body, memo: Any, logger: kopf.Logger, old: Any, **kwargs: Any
) -> None:
    """Render the CronJob for this spec and make the cluster hold exactly it."""
    state = _state(memo)
    namespace = _namespaced(namespace)
    sessionprocessors_by_database = kwargs["sessionprocessors_by_database"]
    try:
        reconcile_processor(state, namespace, name, _plain(body), sessionprocessors_by_database, logger)
    except kopf.TemporaryError:
        metrics.RECONCILE_ERRORS.labels(handler="reconcile").inc()
        raise
    except ApiError as error:
        metrics.RECONCILE_ERRORS.labels(handler="reconcile").inc()
        raise kopf.TemporaryError(f"the API server failed: {error}", delay=5) from error
    # A processor that moved to another database may free a rival that was refused for a clash.
    if isinstance(old, Mapping):
        old_spec = _parse_spec(old)
        if old_spec is not None:
            old_writer = _writer_key(namespace, old_spec)
            _reconcile_rivals(state, old_writer, name, sessionprocessors_by_database, logger, refused=True)


def reconcile_processor(
    state: OperatorState,
    namespace: str,
    name: str,
    body: dict[str, Any],
    by_database: Any,
    logger: logging.Logger | kopf.Logger,
) -> None:
    """Validate what the schema cannot, then create or repair the CronJob and refresh the status."""
    key = (namespace, name)
    try:
        spec = SessionProcessorSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as error:
        mark_invalid(state, body, _validation_message(error), logger)
        return
    try:
        schedule.normalize_schedule(spec.schedule)
    except schedule.InvalidSchedule as error:
        mark_invalid(state, body, f"spec.schedule: {error}", logger)
        return
    refused = policy.refusal(spec, state.settings)  # the chart's admission policy may be absent
    if refused is not None:
        mark_invalid(state, body, refused, logger)
        return
    rival = _older_rival(by_database, _writer_key(namespace, spec), name, _created(body))
    if rival is not None:
        mark_invalid(
            state,
            body,
            f"SessionProcessor {rival!r} already runs processor {spec.processor!r} on database "
            f"{spec.database.claim_name}:{spec.database.path}; two writers would process every session twice",
            logger,
        )
        return
    owner = {"apiVersion": API_VERSION_FULL, "kind": KIND, "name": name, "uid": body["metadata"]["uid"]}
    desired = render.build_cronjob(name, namespace, owner, spec, state.settings)
    with state.lock(key):
        try:
            action = ensure_cronjob(state, key, desired)
        except ApiError as error:
            if error.invalid:
                mark_invalid(state, body, f"the API server rejects the CronJob: {error.message}", logger)
                return
            raise
        state.desired[key] = desired
    if action != "unchanged":
        logger.info(f"CronJob {namespace}/{name} {action}")
    update_status(state, namespace, name, lambda current, status: _reconciled_status(current, status, spec, desired))
    # Two processors created at the same moment may each have checked before the other was indexed.
    _reconcile_rivals(state, _writer_key(namespace, spec), name, by_database, logger, refused=False)


def ensure_cronjob(state: OperatorState, key: Key, desired: dict[str, Any]) -> str:
    """Apply ``desired`` if the CronJob is missing or differs in a field we render; say what was done."""
    path = cronjob_path(key[0], key[1])
    actual = state.client.get(path)
    if actual is not None and not render.cronjob_drifted(desired, actual):
        return "unchanged"
    applied = state.client.apply(path, desired)
    state.applied_versions[key] = str(applied.get("metadata", {}).get("resourceVersion", ""))
    return "created" if actual is None else "updated"


def mark_invalid(
    state: OperatorState, body: dict[str, Any], message: str, logger: logging.Logger | kopf.Logger
) -> None:
    """Record an unworkable spec once: condition, Event, metric; suspend a CronJob left from before.

    Returns normally on purpose: retrying cannot fix a spec, and a changed spec is a new update.
    """
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    key = (namespace, name)
    state.desired.pop(key, None)
    previous = current_invalid(body.get("status") or {})
    update_status(state, namespace, name, lambda current, status: _invalid_status(current, status, message))
    if previous != message:
        logger.warning(f"invalid spec: {message}")
        _post_warn(body, reason="InvalidSpec", message=message)
        metrics.INVALID_SPECS.labels(namespace=namespace, sessionprocessor=name).inc()
    # An older, valid spec's CronJob would keep running a configuration the user replaced.
    cronjob = state.client.get(cronjob_path(namespace, name))
    if cronjob is not None and _owned_by(cronjob, body) and not cronjob.get("spec", {}).get("suspend"):
        state.client.merge_patch(cronjob_path(namespace, name), {"spec": {"suspend": True}})


def _reconcile_rivals(
    state: OperatorState,
    writer: tuple[str, str, str],
    name: str,
    by_database: Any,
    logger: logging.Logger | kopf.Logger,
    *,
    refused: bool,
) -> None:
    """Reconcile again the other processors on ``writer``: the ``refused`` ones (``name`` left the
    database, so one of them may run now) or the accepted ones (one of them must be refused)."""
    holders = [holder for _, holder in _holders(by_database, writer) if holder != name]
    for holder in holders:
        body = state.client.get(sessionprocessor_path(writer[0], holder))
        if body is None or (current_invalid(body.get("status") or {}) is not None) != refused:
            continue
        reconcile_processor(state, writer[0], holder, body, by_database, logger)


@kopf.on.event(API_GROUP, API_VERSION, PLURAL, id="freed-database")
def sessionprocessor_deleted(
    type: str, body: kopf.Body, namespace: str | None, name: str, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """When a processor is deleted, a rival refused for writing the same database may run now."""
    if type != "DELETED":
        return
    state = _state(memo)
    namespace = _namespaced(namespace)
    sessionprocessors_by_database = kwargs["sessionprocessors_by_database"]
    key = (namespace, name)
    state.desired.pop(key, None)
    state.applied_versions.pop(key, None)
    spec = _parse_spec(body.get("spec") or {})
    if spec is not None:
        writer = _writer_key(namespace, spec)
        _reconcile_rivals(state, writer, name, sessionprocessors_by_database, logger, refused=True)


# --- run-now --------------------------------------------------------------------------------------
@kopf.on.create(API_GROUP, API_VERSION, PLURAL, id="run-now-on-create", field=RUN_NOW_FIELD)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, id="run-now", field=RUN_NOW_FIELD)
def run_now(
    namespace: str | None, name: str, body: kopf.Body, new: Any, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    """A new ``sessionpipe.io/run-now`` token: start one Job now, unless one is already running.

    Kopf remembers the last handled annotations, so a token is served once even across restarts;
    the Job also carries the token, which covers a crash between creating it and kopf's bookkeeping.
    """
    token = str(new or "").strip()
    if not token:
        return
    state = _state(memo)
    cr = _plain(body)
    with state.lock((_namespaced(namespace), name)):
        try:
            message = start_run_now(state, cr, token, logger)
        except ApiError as error:
            metrics.RECONCILE_ERRORS.labels(handler="run-now").inc()
            raise kopf.TemporaryError(f"the API server failed: {error}", delay=5) from error
    if message is not None:
        _post_info(cr, reason="RunSkipped", message=message)


def start_run_now(state: OperatorState, cr: dict[str, Any], token: str, logger: kopf.Logger) -> str | None:
    """Create the run-now Job; return why not instead when it must be skipped."""
    namespace, name = cr["metadata"]["namespace"], cr["metadata"]["name"]
    jobs = state.client.list(job_path(namespace), label_selector=f"{LABEL_INSTANCE}={name}")
    if any(_annotations(job).get(ANNOTATION_RUN_NOW_TOKEN) == token for job in jobs):
        logger.info(f"run-now {token!r} was already served")
        return None
    invalid = current_invalid(cr.get("status") or {})
    if invalid is not None:
        return f"run-now {token!r} skipped: the spec is invalid ({invalid})"
    cronjob = state.client.get(cronjob_path(namespace, name))
    if cronjob is None or not _owned_by(cronjob, cr):
        raise kopf.TemporaryError("the CronJob does not exist yet", delay=2)
    running = sorted(
        {job["metadata"]["name"] for job in jobs if status_rules.job_is_active(job)}
        | {ref.get("name", "") for ref in cronjob.get("status", {}).get("active") or []}
    )
    if running:
        return f"run-now {token!r} skipped: Job {', '.join(running)} of this processor is still running"
    created = state.client.create(job_path(namespace), render.build_run_now_job(cronjob, token))
    job_name = created["metadata"]["name"]
    register_active_job(state, cronjob, created)
    # A scheduled tick may have started a Job between our check and the registration: keep one.
    clash = [
        job["metadata"]["name"]
        for job in state.client.list(job_path(namespace), label_selector=f"{LABEL_INSTANCE}={name}")
        if status_rules.job_is_active(job) and job["metadata"]["uid"] != created["metadata"]["uid"]
    ]
    if clash:
        state.client.delete(job_path(namespace, job_name))
        return f"run-now {token!r} skipped: scheduled Job {', '.join(clash)} started at the same moment"
    logger.info(f"run-now {token!r}: started Job {job_name}")
    _post_info(cr, reason="RunStarted", message=f"run-now {token!r}: started Job {job_name}")
    return None


def register_active_job(state: OperatorState, cronjob: dict[str, Any], job: dict[str, Any]) -> None:
    """Add ``job`` to the CronJob's ``status.active`` so that ``concurrencyPolicy: Forbid`` counts it.

    The CronJob controller treats a Job it did not create as "unexpected" and leaves it out of its
    active list; once listed, it keeps the entry until the Job finishes and removes it itself.
    """
    namespace, name = cronjob["metadata"]["namespace"], cronjob["metadata"]["name"]
    reference = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "namespace": namespace,
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "resourceVersion": job["metadata"]["resourceVersion"],
    }
    current: dict[str, Any] | None = cronjob
    for _attempt in range(WRITE_ATTEMPTS):
        if current is None:
            return
        active = list(current.get("status", {}).get("active") or [])
        if any(ref.get("uid") == reference["uid"] for ref in active):
            return
        patch = {
            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
            "status": {"active": [*active, reference]},
        }
        try:
            state.client.merge_patch(cronjob_path(namespace, name, subresource="status"), patch)
            return
        except ApiError as error:
            if not error.conflict:
                raise
        current = state.client.get(cronjob_path(namespace, name))
    raise kopf.TemporaryError("the CronJob kept changing while registering the run-now Job", delay=1)


# --- Job outcomes -----------------------------------------------------------------------------------
@kopf.on.event("batch", "v1", "jobs", labels={LABEL_INSTANCE: kopf.PRESENT}, id="job-outcome")
def job_changed(
    type: str, body: kopf.Body, namespace: str | None, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A finished Job of ours: read the runner's summary and record the run in the CR's status."""
    if type == "DELETED":
        return
    namespace = _namespaced(namespace)
    sessionprocessor_bodies = kwargs["sessionprocessor_bodies"]
    job = _plain(body)
    instance = job["metadata"]["labels"][LABEL_INSTANCE]
    if status_rules.job_outcome(job) is None:
        return
    key = (namespace, instance)
    known = _index_value(sessionprocessor_bodies, key)
    if known is None or _run_recorded(known.get("status") or {}, job["metadata"]["name"]):
        return  # not ours to record, or already recorded (e.g. the listing after a restart)
    state = _state(memo)
    try:
        record_finished_job(state, namespace, instance, job, logger)
    except ApiError as error:
        metrics.RECONCILE_ERRORS.labels(handler="job-outcome").inc()
        raise kopf.TemporaryError(f"the API server failed: {error}", delay=5) from error


def record_finished_job(
    state: OperatorState, namespace: str, instance: str, job: dict[str, Any], logger: kopf.Logger
) -> None:
    """Fold one finished Job into the status; post the run's Event and count it the first time only."""
    job_name = job["metadata"]["name"]
    pods = list_job_pods(state, namespace, job_name)
    summary = status_rules.parse_run_summary(status_rules.termination_message(pods))
    spec = None
    first_time = False
    cr_body: dict[str, Any] | None = None

    def fold(current: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        nonlocal spec, first_time, cr_body
        cr_body = current
        first_time = not _run_recorded(status, job_name)
        spec = _parse_spec(current.get("spec") or {})
        now = datetime.now(UTC)
        folded = status_rules.apply_job_event(status, job, summary, now, pods)
        return _with_conditions(folded, current, spec, now, current_invalid(status))

    written = update_status(state, namespace, instance, fold)
    if written is None or not first_time or cr_body is None:
        return
    record = status_rules.run_record(job, summary, pods)
    outcome = str(record.get("outcome") or status_rules.job_outcome(job) or "unknown")
    processor = job["metadata"].get("labels", {}).get(LABEL_PROCESSOR, "")
    metrics.RUNS.labels(namespace=namespace, sessionprocessor=instance, processor=processor, outcome=outcome).inc()
    for counter, value in ((summary or {}).get("counters") or {}).items():
        metrics.RUN_COUNTERS.labels(
            namespace=namespace, sessionprocessor=instance, processor=processor, counter=counter
        ).inc(value)
    message = _run_message(job_name, outcome, record)
    if outcome == OUTCOME_LEASE_NOT_ACQUIRED:
        _post_info(cr_body, reason="RunSkipped", message=message)
    elif _job_succeeded(job):
        metrics.LAST_SUCCESS.labels(namespace=namespace, sessionprocessor=instance, processor=processor).set(
            datetime.now(UTC).timestamp()
        )
        _post_info(cr_body, reason="RunSucceeded", message=message)
    else:
        _post_warn(cr_body, reason="RunFailed", message=message)
    logger.info(f"recorded {message}")


def list_job_pods(state: OperatorState, namespace: str, job_name: str) -> list[dict[str, Any]]:
    """The Job's pods: their containers' termination messages and states say how the run ended."""
    return state.client.list(pod_path(namespace), label_selector=f"{JOB_NAME_LABEL}={job_name}")


# --- CronJob drift and status mirror ----------------------------------------------------------------
@kopf.on.event(
    "batch", "v1", "cronjobs", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_INSTANCE: kopf.PRESENT}, id="cronjob"
)
def cronjob_changed(
    type: str, body: kopf.Body, namespace: str | None, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    """Put back a CronJob someone deleted or edited, and mirror its schedule state into the CR."""
    state = _state(memo)
    namespace = _namespaced(namespace)
    sessionprocessor_bodies = kwargs["sessionprocessor_bodies"]
    cronjob = _plain(body)
    key = (namespace, cronjob["metadata"]["labels"][LABEL_INSTANCE])
    try:
        if type == "DELETED":
            restore_deleted_cronjob(state, key, logger)
            return
        repair_drift(state, key, cronjob, logger)
        mirror_cronjob_status(state, key, cronjob, _index_value(sessionprocessor_bodies, key))
    except ApiError as error:
        metrics.RECONCILE_ERRORS.labels(handler="cronjob").inc()
        raise kopf.TemporaryError(f"the API server failed: {error}", delay=5) from error


def restore_deleted_cronjob(state: OperatorState, key: Key, logger: kopf.Logger) -> None:
    desired = state.desired.get(key)
    if desired is None:
        return
    cr = state.client.get(sessionprocessor_path(*key))
    owner_uid = desired["metadata"]["ownerReferences"][0]["uid"]
    if cr is None or cr["metadata"].get("deletionTimestamp") or cr["metadata"]["uid"] != owner_uid:
        # The owner is going away: garbage collection deleted the CronJob, as it should.
        state.desired.pop(key, None)
        return
    with state.lock(key):
        desired = state.desired.get(key)  # a reconcile may have replaced it meanwhile
        if desired is None:
            return
        try:
            if ensure_cronjob(state, key, desired) == "unchanged":
                return
        except ApiError as error:
            if error.status == 403 and "being terminated" in error.message:
                state.desired.pop(key, None)  # the namespace is going away with everything in it
                return
            raise
    metrics.DRIFT_REPAIRS.labels(namespace=key[0], sessionprocessor=key[1], kind="deleted").inc()
    logger.info(f"CronJob {key[0]}/{key[1]} was deleted; put it back")
    _post_info(cr, reason="CronJobRestored", message="the CronJob was deleted by someone else; recreated it")


def repair_drift(state: OperatorState, key: Key, cronjob: dict[str, Any], logger: kopf.Logger) -> None:
    # Under the key's lock: a reconcile of a changed spec holds it while it applies the new CronJob
    # and records it, so the event of that apply is never judged against the spec before it.
    with state.lock(key):
        desired = state.desired.get(key)
        if desired is None:
            return
        if cronjob["metadata"].get("resourceVersion") == state.applied_versions.get(key):
            return  # the echo of our own apply
        owner_uid = desired["metadata"]["ownerReferences"][0]["uid"]
        if cronjob["metadata"].get("uid") and not _owned_by_uid(cronjob, owner_uid):
            return
        if not render.cronjob_drifted(desired, cronjob):
            return
        current = state.client.get(cronjob_path(*key))  # the event may be older than our last apply
        if current is None or not render.cronjob_drifted(desired, current):
            return
        applied = state.client.apply(cronjob_path(*key), desired)
        state.applied_versions[key] = str(applied.get("metadata", {}).get("resourceVersion", ""))
    metrics.DRIFT_REPAIRS.labels(namespace=key[0], sessionprocessor=key[1], kind="edited").inc()
    logger.info(f"CronJob {key[0]}/{key[1]} was edited; put the rendered fields back")
    cr = state.client.get(sessionprocessor_path(*key))
    if cr is not None:
        _post_info(cr, reason="CronJobRepaired", message="the CronJob was edited by someone else; restored it")


def mirror_cronjob_status(
    state: OperatorState, key: Key, cronjob: dict[str, Any], known: dict[str, Any] | None
) -> None:
    """Copy the running Jobs (``active``, ``activeCount``) and ``lastScheduleTime`` from the CronJob.

    Writes only when they changed.
    """
    if key not in state.desired or known is None:
        return
    mirrored = status_rules.cronjob_mirror(cronjob)
    current = known.get("status") or {}
    if all(current.get(field_name) == value for field_name, value in mirrored.items()):
        return

    def mirror(cr: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        status.update(mirrored)
        spec = _parse_spec(cr.get("spec") or {})
        status["nextScheduleTime"] = _next_schedule_time(spec, datetime.now(UTC))
        return status

    update_status(state, key[0], key[1], mirror)


# --- the operator-wide stale check ------------------------------------------------------------------
async def _stale_loop(state: OperatorState) -> None:
    """Every minute, re-evaluate time-based conditions of every processor from memory; write changes."""
    while True:
        await asyncio.sleep(STALE_CHECK_SECONDS)
        try:
            await asyncio.to_thread(check_time_based_conditions, state)
        except Exception:
            metrics.RECONCILE_ERRORS.labels(handler="stale-check").inc()
            logging.getLogger(__name__).exception("the stale check failed; trying again in a minute")


def check_time_based_conditions(state: OperatorState) -> None:
    if state.bodies is None:
        return
    now = datetime.now(UTC)
    for key in list(state.bodies):
        known = _index_value(state.bodies, key)
        if known is None:
            continue
        status = known.get("status") or {}
        spec = _parse_spec(known.get("spec") or {})
        last_success = _parse_time(status.get("lastSuccessfulTime"))
        if last_success is not None and spec is not None:
            metrics.LAST_SUCCESS.labels(namespace=key[0], sessionprocessor=key[1], processor=spec.processor).set(
                last_success.timestamp()
            )
        fresh = _with_conditions(copy.deepcopy(status), known, spec, now, current_invalid(status))
        if _strip(fresh.get("conditions")) == _strip(status.get("conditions")):
            continue
        update_status(
            state,
            key[0],
            key[1],
            lambda cr, current: _with_conditions(
                current, cr, _parse_spec(cr.get("spec") or {}), datetime.now(UTC), current_invalid(current)
            ),
        )


# --- status writes --------------------------------------------------------------------------------------
def update_status(
    state: OperatorState,
    namespace: str,
    name: str,
    change: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
) -> dict[str, Any] | None:
    """Read the CR, let ``change`` compute its new status, and write it if it differs.

    Optimistic: the write carries the resourceVersion read, and a conflict (kopf or another handler
    wrote meanwhile) re-reads and recomputes. Returns the status now stored, or ``None`` when the
    SessionProcessor is gone.
    """
    path = sessionprocessor_path(namespace, name)
    for _attempt in range(WRITE_ATTEMPTS):
        body = state.client.get(path)
        if body is None:
            return None
        current: dict[str, Any] = _strip(body.get("status") or {})
        new: dict[str, Any] = _strip(change(body, copy.deepcopy(current)))
        if new == current:
            return current
        body["status"] = new
        try:
            state.client.replace(sessionprocessor_path(namespace, name, subresource="status"), body)
            return new
        except ApiError as error:
            if error.not_found:
                return None
            if not error.conflict:
                raise
    raise kopf.TemporaryError(f"the status of {namespace}/{name} kept changing; trying again", delay=1)


def _reconciled_status(
    cr: dict[str, Any], status: dict[str, Any], spec: SessionProcessorSpec, cronjob: dict[str, Any]
) -> dict[str, Any]:
    now = datetime.now(UTC)
    status["observedGeneration"] = cr["metadata"].get("generation")
    status["cronJobName"] = cronjob["metadata"]["name"]
    status["nextScheduleTime"] = _next_schedule_time(spec, now)
    return _with_conditions(status, cr, spec, now, None)


def _invalid_status(cr: dict[str, Any], status: dict[str, Any], message: str) -> dict[str, Any]:
    status["observedGeneration"] = cr["metadata"].get("generation")
    status["nextScheduleTime"] = None
    return _with_conditions(status, cr, _parse_spec(cr.get("spec") or {}), datetime.now(UTC), message)


def _with_conditions(
    status: dict[str, Any], cr: Mapping[str, Any], spec: SessionProcessorSpec | None, now: datetime, invalid: str | None
) -> dict[str, Any]:
    """``status`` with its conditions recomputed for ``now`` (``cr`` gives the creation time)."""
    period = None
    if spec is not None and invalid is None:
        try:
            period = schedule.schedule_period(schedule.normalize_schedule(spec.schedule))
        except schedule.InvalidSchedule:
            period = None
    created = _parse_time(cr.get("metadata", {}).get("creationTimestamp"))
    status["conditions"] = status_rules.conditions(status, spec, now, period, invalid, created=created)
    return status


def current_invalid(status: Mapping[str, Any]) -> str | None:
    """The message of a true InvalidSpec condition, if any."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == CONDITION_INVALID_SPEC and condition.get("status") == "True":
            return str(condition.get("message") or "invalid spec")
    return None


# --- small pure helpers -------------------------------------------------------------------------------
def _post_info(obj: Mapping[str, Any], *, reason: str, message: str) -> None:
    """A Normal Event on ``obj`` (a plain manifest: kopf only reads its reference fields)."""
    kopf.info(cast(kopf.Body, obj), reason=reason, message=message)


def _post_warn(obj: Mapping[str, Any], *, reason: str, message: str) -> None:
    kopf.warn(cast(kopf.Body, obj), reason=reason, message=message)


def _namespaced(namespace: str | None) -> str:
    if not namespace:
        raise kopf.PermanentError("SessionProcessors, Jobs and CronJobs are namespaced")
    return namespace


def _plain(body: Any) -> dict[str, Any]:
    """A deep, plain-dict copy of a kopf body (kopf's views are read-only and live)."""
    return copy.deepcopy(dict(body))


def _parse_spec(spec: Mapping[str, Any]) -> SessionProcessorSpec | None:
    try:
        return SessionProcessorSpec.model_validate(dict(spec))
    except pydantic.ValidationError:
        return None


def _writer_key(namespace: str, spec: SessionProcessorSpec) -> tuple[str, str, str]:
    return (namespace, spec.processor, render.database_key(spec.database.claim_name, spec.database.path))


def _created(body: Mapping[str, Any]) -> str:
    return str(body.get("metadata", {}).get("creationTimestamp") or "")


def _older_rival(by_database: Any, writer: tuple[str, str, str], name: str, created: str) -> str | None:
    """The oldest *other* processor writing the same database with the same processor, if older than us."""
    rivals = sorted((stamp, holder) for stamp, holder in _holders(by_database, writer) if holder != name)
    if rivals and rivals[0] < (created, name):
        return rivals[0][1]
    return None


def _validation_message(error: pydantic.ValidationError) -> str:
    problems = [f"spec.{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()[:3]]
    return "; ".join(problems)


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = obj.get("metadata", {}).get("annotations") or {}
    return annotations


def _owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    return _owned_by_uid(obj, str(owner.get("metadata", {}).get("uid")))


def _owned_by_uid(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def _holders(by_database: Any, writer: tuple[str, str, str]) -> list[tuple[str, str]]:
    return list(by_database[writer]) if writer in by_database else []


def _index_value(index: Any, key: Key) -> dict[str, Any] | None:
    if index is None or key not in index:
        return None
    for value in index[key]:
        return cast(dict[str, Any], value)
    return None


def _run_recorded(status: Mapping[str, Any], job_name: str) -> bool:
    runs: Iterable[Mapping[str, Any]] = [status.get("lastRun") or {}, *(status.get("recentRuns") or [])]
    return any(run.get("job") == job_name for run in runs)


def _job_succeeded(job: Mapping[str, Any]) -> bool:
    return any(
        condition.get("type") in ("Complete", "SuccessCriteriaMet") and condition.get("status") == "True"
        for condition in job.get("status", {}).get("conditions") or []
    )


def _run_message(job_name: str, outcome: str, record: Mapping[str, Any]) -> str:
    counts = ", ".join(
        f"{name} {record[name]}"
        for name in ("scanned", "processed", "skipped", "errors", "quarantined", "items")
        if record.get(name) is not None
    )
    reason = f": {record['message']}" if record.get("message") else ""
    return f"Job {job_name}: {outcome}" + (f" ({counts})" if counts else "") + reason


def _next_schedule_time(spec: SessionProcessorSpec | None, now: datetime) -> str | None:
    if spec is None or spec.suspend:
        return None
    try:
        fire = schedule.next_fire(schedule.normalize_schedule(spec.schedule), now, spec.time_zone)
    except (schedule.InvalidSchedule, ValueError):
        return None
    return fire.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _strip(value: Any) -> Any:
    """Drop ``None`` values: the API server prunes them, so comparing with them would never settle."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value
