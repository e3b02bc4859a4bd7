"""The narrow door between the operator and the runner.

Both images install this module; neither imports the other. Everything the two sides must agree on
lives here and only here: the API coordinates, labels and annotations, the environment variables the
operator renders into a job pod and the runner reads, the runner's exit codes, and the limits of the
termination message that carries a run summary back to the operator.
"""

from __future__ import annotations

from typing import Final

# --- The SessionProcessor API -------------------------------------------------------------------
API_GROUP: Final = "sessionpipe.io"
API_VERSION: Final = "v1alpha1"
KIND: Final = "SessionProcessor"
PLURAL: Final = "sessionprocessors"
SINGULAR: Final = "sessionprocessor"
SHORT_NAMES: Final = ("sproc",)
CATEGORIES: Final = ("sessionpipe",)

# --- Labels and annotations ---------------------------------------------------------------------
LABEL_PROCESSOR: Final = "sessionpipe.io/processor"  # the processor registered in the job image
LABEL_INSTANCE: Final = "sessionpipe.io/sessionprocessor"  # the SessionProcessor resource's name
LABEL_DATABASE: Final = "sessionpipe.io/database"  # hash of (claim, path): pods that share a DB file
LABEL_RUN_KIND: Final = "sessionpipe.io/run-kind"  # "scheduled" or "run-now"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "sessionpipe-operator"
ANNOTATION_RUN_NOW: Final = "sessionpipe.io/run-now"
ANNOTATION_RUN_NOW_TOKEN: Final = "sessionpipe.io/run-now-token"  # on a run-now Job: the token it served
#: On the database Lease while a run holds it: how far the run got, as compact JSON
#: ``{"processor", "filesDone", "filesTotal", "bytesDone", "bytesTotal"}``; gone once it releases.
ANNOTATION_PROGRESS: Final = "sessionpipe.io/progress"

# --- Environment the runner reads (flags override these; these override defaults) -------------
ENV_PREFIX: Final = "SESSIONPIPE_"
ENV_PROCESSOR: Final = "SESSIONPIPE_PROCESSOR"
ENV_SESSIONS: Final = "SESSIONPIPE_SESSIONS"
ENV_USER: Final = "SESSIONPIPE_USER"
ENV_DB: Final = "SESSIONPIPE_DB"
ENV_LEASE: Final = "SESSIONPIPE_LEASE"
ENV_LEASE_WAIT: Final = "SESSIONPIPE_LEASE_WAIT"
ENV_LEASE_NAMESPACE: Final = "SESSIONPIPE_LEASE_NAMESPACE"
ENV_LEASE_DURATION: Final = "SESSIONPIPE_LEASE_DURATION"
ENV_MAX_SESSIONS: Final = "SESSIONPIPE_MAX_SESSIONS"
ENV_MAX_ATTEMPTS: Final = "SESSIONPIPE_MAX_ATTEMPTS"
ENV_WORKERS: Final = "SESSIONPIPE_WORKERS"
ENV_DB_MEMORY: Final = "SESSIONPIPE_DB_MEMORY"  # DuckDB memory_limit of the writing run
ENV_CONFIG: Final = "SESSIONPIPE_CONFIG"  # processor settings as a JSON object
ENV_PRICING: Final = "SESSIONPIPE_PRICING"  # a user's price file overriding the shipped one
ENV_TERMINATION_LOG: Final = "SESSIONPIPE_TERMINATION_LOG"
ENV_LOG_FORMAT: Final = "SESSIONPIPE_LOG_FORMAT"  # the runner's stderr lines: "plain" or "json"
ENV_LLM_MODEL: Final = "SESSIONPIPE_LLM_MODEL"
ENV_LLM_MAX_TOKENS_PER_RUN: Final = "SESSIONPIPE_LLM_MAX_TOKENS_PER_RUN"
ENV_ANTHROPIC_API_KEY: Final = "ANTHROPIC_API_KEY"
ENV_POD_NAME: Final = "POD_NAME"
ENV_POD_NAMESPACE: Final = "POD_NAMESPACE"

DEFAULT_TERMINATION_LOG: Final = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT: Final = 4096  # bytes the kubelet keeps of a termination message

# --- Runner exit codes -------------------------------------------------------------------------
EXIT_OK: Final = 0  # the run completed; per-session failures are counted in the summary
EXIT_FAILED: Final = 1  # the run could not complete (database unusable, processor failed to load…)
EXIT_USAGE: Final = 2  # bad flags or settings: a user mistake, explained on stderr
EXIT_DATABASE_BUSY: Final = 69  # status/report/forget --dry-run: a run holds the database, no snapshot yet
EXIT_LEASE_NOT_ACQUIRED: Final = 75  # another writer held the database lease for the whole wait
EXIT_LEASE_LOST: Final = 76  # the lease was lost mid-run; the runner rolled back and stopped writing
EXIT_TERMINATED: Final = 143  # SIGTERM: rolled back, released the lease, wrote the summary

# --- Defaults shared by the CRD and the runner ---------------------------------------------------
DEFAULT_SESSIONS_MOUNT: Final = "/data/sessions"
DEFAULT_DATABASE_MOUNT: Final = "/data/db"
DEFAULT_DATABASE_PATH: Final = "sessionpipe.duckdb"
DEFAULT_LEASE_WAIT_SECONDS: Final = 600
DEFAULT_LEASE_DURATION_SECONDS: Final = 30
DEFAULT_MAX_ATTEMPTS: Final = 3
#: DuckDB's own default is 80 % of the machine's memory, and a writer caches the blocks it writes up to
#: that. With this cap a run over 1 GB of transcripts, its two worker processes included, peaks near
#: 420 MB (PSS) instead of growing with the data; at 256MB it peaked near 530 MB, no faster.
DEFAULT_DB_MEMORY: Final = "128MB"

# --- Run outcomes (the runner's summary "outcome"; the operator's lastRun.outcome) -------------
OUTCOME_SUCCEEDED: Final = "succeeded"  # every candidate processed
OUTCOME_PARTIAL: Final = "completed_with_errors"  # the run completed; some sessions failed
OUTCOME_STOPPED: Final = "stopped"  # a budget or --max-sessions ended the run early, cleanly
OUTCOME_FAILED: Final = "failed"
OUTCOME_LEASE_NOT_ACQUIRED: Final = "lease_not_acquired"
OUTCOME_LEASE_LOST: Final = "lease_lost"
OUTCOME_TERMINATED: Final = "terminated"
#: Every outcome above (the operator exports a run count of each from a processor's start).
OUTCOMES: Final = (
    OUTCOME_SUCCEEDED,
    OUTCOME_PARTIAL,
    OUTCOME_STOPPED,
    OUTCOME_FAILED,
    OUTCOME_LEASE_NOT_ACQUIRED,
    OUTCOME_LEASE_LOST,
    OUTCOME_TERMINATED,
)

#: The run counter in which LLM-calling processors report what their calls cost, in millionths of a
#: dollar (counters are integers); the operator also exports it in dollars.
COUNTER_LLM_COST_MICROUSD: Final = "llm_cost_microusd"

#: Keys of the compact run summary the runner writes to the termination message (a JSON object).
#: ``started``/``finished`` are RFC 3339 UTC; ``duration_seconds`` a float; the counts integers.
SUMMARY_KEYS: Final = (
    "processor",
    "processor_version",
    "run_id",
    "outcome",
    "exit_code",
    "started",
    "finished",
    "duration_seconds",
    "scanned",
    "unchanged",
    "hashed",
    "processed",
    "skipped",
    "errors",
    "quarantined",
    "items",
    "issues",  # {reason: count}: input the processor could not use (when the message must shrink, the
    # most frequent kinds only; the others are summed up in "issues_omitted": {"kinds": n, "count": n})
    "counters",  # {name: count}: what the processor did or spent (llm_calls, llm_tokens)
    "message",
)
