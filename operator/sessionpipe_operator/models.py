"""The ``SessionProcessor`` resource as pydantic models: the single source of truth for its CRD.

:mod:`sessionpipe_operator.crd` generates the CRD's OpenAPI schema from these models, so every bound,
pattern, default and description written here is enforced twice: by the API server (through the
schema and the CEL rules in ``x-kubernetes-validations``) and by the operator, which validates each
body with :class:`SessionProcessorSpec` before acting on it. A rule only the operator can check (a
schedule shorthand with no exact cron form, an unknown time zone) lives in the operator's modules.

Why this file is over 400 lines: it is the CRD written as Python, one field after another, each with
its bounds and the description ``kubectl explain`` shows. Split, the spec and its status would be
read in two places though the API server serves them as one resource; nothing in it is logic.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from sessionpipe_contract import (
    DEFAULT_DATABASE_MOUNT,
    DEFAULT_DATABASE_PATH,
    DEFAULT_LEASE_WAIT_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_SESSIONS_MOUNT,
    ENV_CONFIG,
)

#: How many finished runs ``status.recentRuns`` keeps, newest first.
RECENT_RUNS_LIMIT = 10
#: The longest ``lastRun.message``: why a run did not succeed.
MAX_RUN_MESSAGE = 1024
#: CronJob names are limited to 52 characters (the controller appends an 11-character suffix to
#: name its Jobs); the CronJob is named after the SessionProcessor.
MAX_NAME_LENGTH = 52

DEFAULT_TIMEOUT_SECONDS = 900
DEFAULT_STARTING_DEADLINE_SECONDS = 300
DEFAULT_HISTORY_LIMIT = 3
DEFAULT_API_KEY_SECRET_KEY = "ANTHROPIC_API_KEY"
DEFAULT_PRICING_CONFIGMAP_KEY = "pricing.json"

#: The shapes of ``spec.schedule`` the API server accepts: five cron fields, an ``@hourly``-style
#: macro, or an ``every N{m,h,d}`` shorthand. Whether a shorthand maps exactly onto cron, and whether
#: each cron field is in range, is decided by :func:`sessionpipe_operator.schedule.normalize_schedule`.
SCHEDULE_SHAPE = (
    r"^\s*("
    r"@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
    r"|every\s+[0-9]{1,6}\s*[mhd]"
    r"|[0-9A-Za-z*?/,-]+(\s+[0-9A-Za-z*?/,-]+){4}"
    r")\s*$"
)
#: A DNS-1123 subdomain: the names of claims, Leases and service accounts.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
#: A processor name is also a label value (``sessionpipe.io/processor``).
PROCESSOR_NAME = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
#: An IANA zone name such as ``Europe/Berlin`` or ``UTC``; whether it exists is the API server's
#: call when it validates the CronJob (the schema cannot carry the zone database).
TIME_ZONE = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
#: A relative path that stays inside its volume: no leading ``/``, no ``..`` component.
RELATIVE_PATH_RULE = "!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')"
ABSOLUTE_PATH = r"^/[^\s]*$"
RESERVED_MOUNTS = ("/", "/tmp", DEFAULT_DATABASE_MOUNT)

#: The most bytes ``spec.config`` may take in the form it is carried in: compact JSON with every
#: non-ASCII character escaped (``ü`` is ``\\u00fc``, six bytes). The job pod gets it in one
#: environment string, which Linux limits to 128 KiB; kopf keeps the spec in an annotation on the
#: SessionProcessor, and the API server limits all its annotations together to 256 KiB, with
#: kubectl's last-applied-configuration carrying the spec once more. A free-form object is opaque
#: to the CRD's CEL rules, so the operator enforces this bound (``InvalidSpec``).
CONFIG_MAX_BYTES = 32 * 1024

_SCHEDULE_RE = re.compile(SCHEDULE_SHAPE)
_PARENT_COMPONENT_RE = re.compile(r"(^|/)[.][.](/|$)")


def _cel(rule: str, message: str) -> JsonDict:
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


def _relative_path(value: str, what: str) -> str:
    if value.startswith("/") or _PARENT_COMPONENT_RE.search(value):
        raise ValueError(f"{what} must be a relative path inside the volume, without '..'")
    return value


def config_json(config: dict[str, Any]) -> str:
    """``spec.config`` as the job pod receives it: compact, sorted, ASCII-only JSON."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def config_size(config: dict[str, Any]) -> int:
    """Bytes of ``config`` as carried: the same in the pod's environment and kopf's annotation."""
    return len(config_json(config))  # ASCII-only: one byte per character


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields and coerced types are errors, as in the schema."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=True)


class SessionsVolume(_Model):
    """The volume with the transcripts; job pods mount it read-only."""

    claim_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of the PersistentVolumeClaim holding the transcripts (one folder per user).",
    )
    sub_path: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Folder inside the claim to mount instead of its root; relative, without '..'.",
        json_schema_extra=_cel(RELATIVE_PATH_RULE, "must be a relative path inside the volume, without '..'"),
    )
    mount_path: str = Field(
        default=DEFAULT_SESSIONS_MOUNT,
        min_length=1,
        max_length=1024,
        pattern=ABSOLUTE_PATH,
        description="Where the transcripts are mounted in the job pod; an absolute path.",
        json_schema_extra=_cel(
            "!(self in " + repr(list(RESERVED_MOUNTS)).replace('"', "'") + ")",
            f"must not be one of {', '.join(RESERVED_MOUNTS)}: the job pod mounts other volumes there",
        ),
    )

    @field_validator("sub_path")
    @classmethod
    def _sub_path_inside(cls, value: str | None) -> str | None:
        return None if value is None else _relative_path(value, "subPath")

    @field_validator("mount_path")
    @classmethod
    def _mount_path_free(cls, value: str) -> str:
        if value in RESERVED_MOUNTS:
            raise ValueError(f"must not be one of {', '.join(RESERVED_MOUNTS)}")
        return value


class DatabaseVolume(_Model):
    """The DuckDB file every run of the processor writes, and the Lease that serialises its writers."""

    claim_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of the PersistentVolumeClaim holding the DuckDB database file.",
    )
    path: str = Field(
        default=DEFAULT_DATABASE_PATH,
        min_length=1,
        max_length=1024,
        description="Path of the database file inside the claim; relative, without '..'.",
        json_schema_extra=_cel(RELATIVE_PATH_RULE, "must be a relative path inside the volume, without '..'"),
    )
    lease_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description=(
            "Name of the coordination.k8s.io Lease that lets one writer at a time open the database. "
            "Default: derived from claimName and path, so every processor writing the same file shares it."
        ),
    )
    lease_wait_seconds: int = Field(
        default=DEFAULT_LEASE_WAIT_SECONDS,
        ge=0,
        le=86400,
        description="How long a run waits for the Lease before it gives up with 'lease not acquired'.",
    )

    @field_validator("path")
    @classmethod
    def _path_inside(cls, value: str) -> str:
        return _relative_path(value, "path")


class RunSettings(_Model):
    """Limits of one run (one Job)."""

    timeout_seconds: int = Field(
        default=DEFAULT_TIMEOUT_SECONDS,
        ge=1,
        le=604800,
        description="The Job's activeDeadlineSeconds: a run still going after this long is stopped.",
    )
    max_sessions_per_run: int = Field(
        default=0,
        ge=0,
        le=100_000_000,
        description="Process at most this many sessions per run; the rest wait for the next run. 0: no cap.",
    )
    max_attempts_per_session: int = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        ge=1,
        le=1000,
        description="Failed attempts after which a session is quarantined until its file changes or is reset.",
    )
    starting_deadline_seconds: int = Field(
        default=DEFAULT_STARTING_DEADLINE_SECONDS,
        ge=10,
        le=86400,
        description="The CronJob's startingDeadlineSeconds: a run that could not start this late is skipped.",
    )


class HistoryLimits(_Model):
    """How many finished Jobs the CronJob keeps."""

    successful: int = Field(
        default=DEFAULT_HISTORY_LIMIT, ge=0, le=100, description="Successful Jobs to keep (successfulJobsHistoryLimit)."
    )
    failed: int = Field(
        default=DEFAULT_HISTORY_LIMIT, ge=0, le=100, description="Failed Jobs to keep (failedJobsHistoryLimit)."
    )


def _object_name(kind: str) -> Any:
    """The ``name`` field of a reference to a Secret or ConfigMap in the SessionProcessor's namespace."""
    return Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description=f"Name of the {kind}.")


def _object_key(default: str, description: str) -> Any:
    """The ``key`` field of such a reference: a data key, with a default."""
    return Field(default=default, min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description=description)


class SecretKeyRef(_Model):
    """A key of a Secret in the SessionProcessor's namespace."""

    name: str = _object_name("Secret")
    key: str = _object_key(DEFAULT_API_KEY_SECRET_KEY, "Key inside the Secret whose value is the API key.")


class LlmSettings(_Model):
    """For processors that call a language model (Anthropic)."""

    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$",
        description="Model name passed to the processor, for example claude-sonnet-4-5.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="The Secret key holding the API key; the key never appears in the spec or the CronJob.",
    )
    max_tokens_per_run: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000_000,
        description="Token budget of one run; when it is spent the run stops cleanly and the rest waits.",
    )

    @model_validator(mode="after")
    def _model_needs_key(self) -> Self:
        if self.model is not None and self.api_key_secret_ref is None:
            raise ValueError("llm.model needs llm.apiKeySecretRef: the API key only ever comes from a Secret")
        return self


LLM_RULES = _cel(
    "!has(self.model) || has(self.apiKeySecretRef)",
    "llm.model needs llm.apiKeySecretRef: the API key only ever comes from a Secret",
)


class ConfigMapKeyRef(_Model):
    """A key of a ConfigMap in the SessionProcessor's namespace."""

    name: str = _object_name("ConfigMap")
    key: str = _object_key(DEFAULT_PRICING_CONFIGMAP_KEY, "Key inside the ConfigMap whose value is the price file.")


class PricingSettings(_Model):
    """Model prices over the job image's shipped ones (the usage processor's SESSIONPIPE_PRICING)."""

    config_map_ref: ConfigMapKeyRef = Field(
        description=(
            "The ConfigMap key holding a price file (this project's format, as `sessionpipe pricing import` "
            "writes it, or a LiteLLM table); mounted read-only into job pods and named by SESSIONPIPE_PRICING."
        )
    )


QuantityValue = int | str


class ResourceRequirements(_Model):
    """CPU and memory for the job container, as in a Pod's resources."""

    requests: dict[str, QuantityValue] | None = Field(
        default=None, description="Minimum resources, for example {cpu: 100m, memory: 256Mi}."
    )
    limits: dict[str, QuantityValue] | None = Field(
        default=None, description="Maximum resources, for example {memory: 1Gi}."
    )


class PodTemplate(_Model):
    """Placement and metadata for job pods."""

    labels: dict[str, str] | None = Field(
        default=None, description="Extra labels on job pods; the operator's own sessionpipe.io labels win."
    )
    annotations: dict[str, str] | None = Field(default=None, description="Extra annotations on job pods.")
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="The job pod's PriorityClass; unset: the cluster's default.",
    )
    node_selector: dict[str, str] | None = Field(default=None, description="The job pod's nodeSelector.")
    tolerations: list[dict[str, Any]] | None = Field(
        default=None,
        description="The job pod's tolerations, as in a Pod spec.",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="The job pod's affinity, as in a Pod spec (for example a pod affinity on the database label).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class SessionProcessorSpec(_Model):
    """What to run, when, on which volumes, and within which limits."""

    processor: str = Field(
        min_length=1,
        max_length=63,
        pattern=PROCESSOR_NAME,
        description="Processor registered in the job image: usage, verification, or a plugin's name.",
    )
    schedule: str = Field(
        min_length=1,
        max_length=128,
        description=(
            "When to run: a 5-field cron expression, an @hourly/@daily/@weekly/@monthly/@yearly macro, "
            "or 'every 15m' / 'every 2h' / 'every 1d' where that maps exactly onto cron."
        ),
        json_schema_extra=_cel(
            f"self.matches('{SCHEDULE_SHAPE}')".replace("\\", "\\\\"),
            "must be a 5-field cron expression, an @hourly-style macro, or 'every N' with m, h or d",
        ),
    )
    time_zone: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=TIME_ZONE,
        description="IANA time zone of the schedule, for example Europe/Berlin. Default: the controller's.",
    )
    suspend: bool = Field(default=False, description="Stop scheduling new runs; a running Job finishes.")
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        pattern=r"^[^\s]+$",
        description="Job image holding the runner and the processor. Default: the operator's configured image.",
    )
    sessions: SessionsVolume = Field(description="The transcripts volume, mounted read-only.")
    database: DatabaseVolume = Field(description="The DuckDB database file and the Lease guarding it.")
    # ``default: {}`` in the schema lets the API server fill in the nested defaults.
    run: RunSettings = Field(
        default_factory=RunSettings, description="Limits of one run.", json_schema_extra={"default": {}}
    )
    history: HistoryLimits = Field(
        default_factory=HistoryLimits, description="Finished Jobs to keep.", json_schema_extra={"default": {}}
    )
    llm: LlmSettings | None = Field(
        default=None,
        description="Model, API key Secret and token budget for LLM processors.",
        json_schema_extra=LLM_RULES,
    )
    pricing: PricingSettings | None = Field(
        default=None, description="A price file from a ConfigMap, over the prices shipped in the job image."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Free-form processor settings, passed to the processor as a JSON object; at most "
            f"{CONFIG_MAX_BYTES} bytes as compact JSON with non-ASCII characters escaped (InvalidSpec beyond)."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "default": {}},
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU and memory requests and limits of the job container."
    )
    service_account_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Service account of job pods. Default: the operator's configured job service account.",
    )
    pod_template: PodTemplate | None = Field(
        default=None, description="Labels, annotations, nodeSelector, tolerations and affinity of job pods."
    )

    @field_validator("schedule")
    @classmethod
    def _schedule_shape(cls, value: str) -> str:
        if not _SCHEDULE_RE.match(value):
            raise ValueError("must be a 5-field cron expression, an @hourly-style macro, or 'every N' with m, h or d")
        return value

    @field_validator("config")
    @classmethod
    def _config_fits(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = config_size(value)
        if size > CONFIG_MAX_BYTES:
            raise ValueError(
                f"is {size} bytes as compact JSON with non-ASCII escaped (the form of the job pod's {ENV_CONFIG} "
                f"and of kopf's annotation), over the limit of {CONFIG_MAX_BYTES} bytes"
            )
        return value


# --- status ---------------------------------------------------------------------------------------
_TIME: JsonDict = {"format": "date-time"}


class Condition(_Model):
    """One condition, in the shape of metav1.Condition."""

    type: str = Field(min_length=1, max_length=316, description="Ready, Stale, Degraded or InvalidSpec.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(min_length=1, max_length=1024, description="A CamelCase word saying why.")
    message: str = Field(default="", max_length=32768, description="What happened, for a person.")
    last_transition_time: str = Field(description="When status last changed.", json_schema_extra=_TIME)
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec this condition was computed from."
    )


class RunRecord(_Model):
    """One finished run (Job) and what its runner reported."""

    job: str = Field(min_length=1, max_length=253, description="Name of the Job.")
    start: str | None = Field(default=None, description="When the run started.", json_schema_extra=_TIME)
    end: str | None = Field(default=None, description="When the run finished.", json_schema_extra=_TIME)
    outcome: str | None = Field(
        default=None,
        max_length=64,
        description=(
            "succeeded, completed_with_errors, stopped, failed, lease_not_acquired, lease_lost, terminated, "
            "or deadline_exceeded when the Job ran out of time."
        ),
    )
    scanned: int | None = Field(default=None, ge=0, description="Session files found.")
    processed: int | None = Field(default=None, ge=0, description="Sessions processed successfully.")
    skipped: int | None = Field(default=None, ge=0, description="Sessions not processed (unchanged, over a cap).")
    errors: int | None = Field(default=None, ge=0, description="Sessions whose processing failed.")
    quarantined: int | None = Field(default=None, ge=0, description="Sessions quarantined by this run.")
    items: int | None = Field(default=None, ge=0, description="Items (rows) the processor wrote.")
    duration: float | None = Field(default=None, ge=0, description="Length of the run in seconds.")
    message: str | None = Field(
        default=None,
        max_length=MAX_RUN_MESSAGE,
        description=(
            "Why a run that did not succeed ended so: the runner's own message, else what Kubernetes "
            "reported (the Job's condition, the container's state: a start error, OOMKilled, an image pull)."
        ),
    )


class SessionProcessorStatus(_Model):
    """What the operator observed; written by the operator only."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec the CronJob was last rendered from."
    )
    cron_job_name: str | None = Field(default=None, max_length=253, description="Name of the CronJob.")
    conditions: list[Condition] | None = Field(
        default=None,
        max_length=16,
        description="Ready, Stale, Degraded and InvalidSpec.",
        # One entry per type: server-side apply and strategic merges key on it, as for built-in conditions.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    schedule: str | None = Field(
        default=None,
        max_length=256,
        description="The cron the CronJob runs on: spec.schedule with a shorthand such as @daily spelled out.",
    )
    active: list[str] | None = Field(default=None, max_length=64, description="Names of the Jobs running now.")
    active_jobs: str | None = Field(
        default=None, max_length=4096, description="The names in active, comma-separated, for the JOBS column."
    )
    progress: str | None = Field(
        default=None,
        max_length=64,
        description="How far the running Job got, as files done/total (1,234/5,000); unset when no Job runs.",
    )
    active_count: int | None = Field(default=None, ge=0, description="How many Jobs are running now.")
    last_schedule_time: str | None = Field(
        default=None, description="When the CronJob last started a Job.", json_schema_extra=_TIME
    )
    last_successful_time: str | None = Field(
        default=None, description="When a run last finished successfully.", json_schema_extra=_TIME
    )
    last_failure_time: str | None = Field(default=None, description="When a run last failed.", json_schema_extra=_TIME)
    next_schedule_time: str | None = Field(
        default=None, description="When the schedule fires next (unset while suspended).", json_schema_extra=_TIME
    )
    consecutive_failures: int | None = Field(
        default=None, ge=0, description="Failed runs since the last successful one."
    )
    last_run: RunRecord | None = Field(default=None, description="The most recently finished run.")
    recent_runs: list[RunRecord] | None = Field(
        default=None, max_length=RECENT_RUNS_LIMIT, description="The last finished runs, newest first."
    )
