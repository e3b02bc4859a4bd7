"""Who may run what: the job images and service accounts a SessionProcessor may ask for.

The operator creates CronJobs, hence pods, with its own rights. Without a limit, whoever may create a
SessionProcessor could run any image under any service account of the namespace through the
operator, even without the right to create pods (a confused deputy). The chart's
ValidatingAdmissionPolicy refuses such a spec at the API server; this module is the same rule in the
operator, for clusters where the policy is not installed.

The rule, which the policy's CEL expressions apply in the same way:

- A spec without ``image`` or ``serviceAccountName`` gets the operator's defaults and is allowed.
- An allowed-images entry ``*`` allows every image. An entry ending in ``/`` is a registry or
  organisation prefix: it allows every image that starts with it. Any other entry is a repository:
  it allows the image that is exactly it, or continues right after it with a tag (``:``), a digest
  (``@``) or a path below it (``/``). So ``ghcr.io/sessionpipe/sessionpipe-job`` allows
  ``ghcr.io/sessionpipe/sessionpipe-job:0.1.0`` but not ``ghcr.io/sessionpipe/sessionpipe-job-evil:1``.
- Images are compared as written: ``busybox`` and ``docker.io/library/busybox`` are different texts.
- An allowed-service-accounts entry is a name of a service account in the SessionProcessor's own
  namespace, or ``*`` for any.
"""

from __future__ import annotations

from collections.abc import Iterable

from sessionpipe_operator.models import SessionProcessorSpec
from sessionpipe_operator.settings import ENV_ALLOWED_IMAGES, ENV_ALLOWED_SERVICE_ACCOUNTS, OperatorSettings

ANY = "*"
#: What may follow an allowed repository in an image reference: a tag, a digest, a nested path.
REPOSITORY_BOUNDARIES = (":", "@", "/")
#: The service account a pod gets when neither the spec nor the operator names one.
DEFAULT_SERVICE_ACCOUNT = "default"


def image_repository(reference: str) -> str:
    """``reference`` without its digest and tag: ``host:5000/team/job:1@sha256:…`` -> ``host:5000/team/job``."""
    name = reference.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    # A colon before the last slash belongs to a registry's port, not to a tag.
    return name[:colon] if colon > last_slash else name


def image_allowed(image: str, allowed: Iterable[str]) -> bool:
    """Whether some entry of ``allowed`` allows ``image`` (the rule in the module docstring)."""
    return any(_entry_allows(entry, image) for entry in allowed)


def _entry_allows(entry: str, image: str) -> bool:
    if entry == ANY:
        return True
    if entry.endswith("/"):
        return image.startswith(entry)
    return image == entry or any(image.startswith(entry + boundary) for boundary in REPOSITORY_BOUNDARIES)


def service_account_allowed(name: str, allowed: Iterable[str]) -> bool:
    """Whether ``allowed`` names ``name`` or holds ``*``."""
    return any(entry in (ANY, name) for entry in allowed)


def allowed_images(settings: OperatorSettings) -> tuple[str, ...]:
    """The configured entries, else the repository of the operator's own job image."""
    return settings.allowed_images or (image_repository(settings.job_image),)


def allowed_service_accounts(settings: OperatorSettings) -> tuple[str, ...]:
    """The configured names, else the account job pods get by default."""
    return settings.allowed_service_accounts or (settings.job_service_account or DEFAULT_SERVICE_ACCOUNT,)


def refusal(spec: SessionProcessorSpec, settings: OperatorSettings) -> str | None:
    """Why the operator must not run ``spec`` (naming the field and what is allowed), or ``None``."""
    images = allowed_images(settings)
    if spec.image is not None and not image_allowed(spec.image, images):
        return (
            f"spec.image {spec.image!r} is not allowed: use an image under {', '.join(images)} "
            f"(or leave spec.image unset); {ENV_ALLOWED_IMAGES} lists what is allowed"
        )
    accounts = allowed_service_accounts(settings)
    if spec.service_account_name is not None and not service_account_allowed(spec.service_account_name, accounts):
        return (
            f"spec.serviceAccountName {spec.service_account_name!r} is not allowed: use {', '.join(accounts)} "
            f"(or leave spec.serviceAccountName unset); {ENV_ALLOWED_SERVICE_ACCOUNTS} lists what is allowed"
        )
    return None
