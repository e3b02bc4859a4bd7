"""The operator's own settings, read once from the environment into one typed, frozen object."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

ENV_JOB_IMAGE = "SESSIONPIPE_OPERATOR_JOB_IMAGE"
ENV_JOB_SERVICE_ACCOUNT = "SESSIONPIPE_OPERATOR_JOB_SERVICE_ACCOUNT"
ENV_JOB_IMAGE_PULL_POLICY = "SESSIONPIPE_OPERATOR_JOB_IMAGE_PULL_POLICY"
ENV_NAMESPACES = "SESSIONPIPE_OPERATOR_NAMESPACES"
ENV_LOG_FORMAT = "SESSIONPIPE_OPERATOR_LOG_FORMAT"
ENV_HEALTH_PORT = "SESSIONPIPE_OPERATOR_HEALTH_PORT"
ENV_METRICS_PORT = "SESSIONPIPE_OPERATOR_METRICS_PORT"
ENV_ALLOWED_IMAGES = "SESSIONPIPE_OPERATOR_ALLOWED_IMAGES"
ENV_ALLOWED_SERVICE_ACCOUNTS = "SESSIONPIPE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS"

DEFAULT_JOB_IMAGE = "ghcr.io/sessionpipe/sessionpipe-job:0.1.0"
DEFAULT_HEALTH_PORT = 8080
DEFAULT_METRICS_PORT = 9090
LOG_FORMATS = ("plain", "json")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

LogFormat = Literal["plain", "json"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class InvalidSettings(ValueError):
    """An environment variable of the operator has a value it cannot use; the message names it."""


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator needs besides the SessionProcessors themselves.

    ``job_image`` and ``job_service_account`` apply to processors whose spec leaves ``image`` or
    ``serviceAccountName`` unset; ``namespaces`` empty means the whole cluster. ``allowed_images`` and
    ``allowed_service_accounts`` limit what a spec may ask for (:mod:`sessionpipe_operator.policy`);
    empty means the default rule: the repository of ``job_image``, and ``job_service_account``.
    """

    job_image: str = DEFAULT_JOB_IMAGE
    job_service_account: str | None = None
    namespaces: tuple[str, ...] = ()
    log_format: LogFormat = "plain"
    health_port: int = DEFAULT_HEALTH_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    allowed_images: tuple[str, ...] = ()
    allowed_service_accounts: tuple[str, ...] = ()
    #: The job containers' imagePullPolicy; ``None`` leaves it to Kubernetes (Always for :latest).
    job_image_pull_policy: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorSettings:
        """Read ``SESSIONPIPE_OPERATOR_*``; unset or empty variables take the defaults.

        Raises :class:`InvalidSettings` naming the variable when a value cannot be used.
        """
        job_image = environ.get(ENV_JOB_IMAGE, "").strip() or DEFAULT_JOB_IMAGE
        if any(character.isspace() for character in job_image):
            raise InvalidSettings(f"{ENV_JOB_IMAGE}={job_image!r}: an image reference has no spaces")
        account = environ.get(ENV_JOB_SERVICE_ACCOUNT, "").strip() or None
        if account is not None and not _DNS_SUBDOMAIN.match(account):
            raise InvalidSettings(f"{ENV_JOB_SERVICE_ACCOUNT}={account!r}: not a valid service account name")
        pull_policy = environ.get(ENV_JOB_IMAGE_PULL_POLICY, "").strip() or None
        if pull_policy is not None and pull_policy not in PULL_POLICIES:
            raise InvalidSettings(f"{ENV_JOB_IMAGE_PULL_POLICY}={pull_policy!r}: use one of {', '.join(PULL_POLICIES)}")
        namespaces = _entries(environ, ENV_NAMESPACES)
        for namespace in namespaces:
            if not _DNS_LABEL.match(namespace):
                raise InvalidSettings(f"{ENV_NAMESPACES}: {namespace!r} is not a valid namespace name")
        log_format = environ.get(ENV_LOG_FORMAT, "").strip().lower() or "plain"
        if log_format not in LOG_FORMATS:
            raise InvalidSettings(f"{ENV_LOG_FORMAT}={log_format!r}: use one of {', '.join(LOG_FORMATS)}")
        health_port = _port(environ, ENV_HEALTH_PORT, DEFAULT_HEALTH_PORT)
        metrics_port = _port(environ, ENV_METRICS_PORT, DEFAULT_METRICS_PORT)
        if health_port == metrics_port:
            raise InvalidSettings(f"{ENV_HEALTH_PORT} and {ENV_METRICS_PORT} must differ (both are {health_port})")
        allowed_images = _entries(environ, ENV_ALLOWED_IMAGES)
        for image in allowed_images:
            if any(character.isspace() for character in image):
                raise InvalidSettings(f"{ENV_ALLOWED_IMAGES}: {image!r} is not an image prefix (no spaces)")
        allowed_accounts = _entries(environ, ENV_ALLOWED_SERVICE_ACCOUNTS)
        for allowed in allowed_accounts:
            if allowed != "*" and not _DNS_SUBDOMAIN.match(allowed):
                raise InvalidSettings(f"{ENV_ALLOWED_SERVICE_ACCOUNTS}: {allowed!r} is not a service account name or *")
        return cls(
            job_image=job_image,
            job_service_account=account,
            job_image_pull_policy=pull_policy,
            namespaces=namespaces,
            log_format=cast(LogFormat, log_format),
            health_port=health_port,
            metrics_port=metrics_port,
            allowed_images=allowed_images,
            allowed_service_accounts=allowed_accounts,
        )


def _entries(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list: blanks dropped, duplicates once, order kept."""
    return tuple(dict.fromkeys(part.strip() for part in environ.get(name, "").split(",") if part.strip()))


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        port = int(text)
    except ValueError:
        raise InvalidSettings(f"{name}={text!r}: a port is a whole number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise InvalidSettings(f"{name}={text!r}: a port is a whole number from 1 to 65535")
    return port
