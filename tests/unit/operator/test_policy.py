"""Who may run what: the operator's image and service-account rule, and its settings."""

from __future__ import annotations

from typing import Any

import pytest

from sessionpipe_operator.models import SessionProcessorSpec
from sessionpipe_operator.policy import (
    allowed_images,
    allowed_service_accounts,
    image_allowed,
    image_repository,
    refusal,
    service_account_allowed,
)
from sessionpipe_operator.settings import OperatorSettings

JOB = "ghcr.io/sessionpipe/sessionpipe-job"

#: (allowed entries, image, allowed?): the cases the chart's CEL policy is held to as well
#: (tests/cluster/test_admission_policy.py runs them through the API server).
IMAGE_CASES: list[tuple[tuple[str, ...], str, bool]] = [
    ((JOB,), JOB, True),
    ((JOB,), f"{JOB}:0.1.0", True),
    ((JOB,), f"{JOB}@sha256:{'a' * 64}", True),
    ((JOB,), f"{JOB}:0.1.0@sha256:{'a' * 64}", True),
    ((JOB,), f"{JOB}/plugins:1", True),
    ((JOB,), f"{JOB}-evil:1", False),
    ((JOB,), f"{JOB}evil", False),
    ((JOB,), "ghcr.io/sessionpipe/other:1", False),
    ((JOB,), f"evil.example/{JOB}:1", False),
    ((JOB,), "ghcr.io/sessionpipe/sessionpipe-jo", False),
    (("ghcr.io/sessionpipe/",), f"{JOB}:1", True),
    (("ghcr.io/sessionpipe/",), "ghcr.io/sessionpipe-evil/job:1", False),
    (("registry.example:5000/",), "registry.example:5000/team/job:2", True),
    (("registry.example:5000/",), "registry.example:50001/team/job:2", False),
    (("registry.example/team/job:2",), "registry.example/team/job:2", True),
    (("registry.example/team/job:2",), "registry.example/team/job:20", False),
    ((JOB, "registry.example/"), "registry.example/anything:1", True),
    (("*",), "docker.io/library/busybox:1", True),
    ((), f"{JOB}:1", False),
]


@pytest.mark.parametrize(("allowed", "image", "expected"), IMAGE_CASES)
def test_an_allowed_repository_matches_only_at_a_tag_digest_or_path_boundary(
    allowed: tuple[str, ...], image: str, expected: bool
) -> None:
    assert image_allowed(image, allowed) is expected


@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        (f"{JOB}:0.1.0", JOB),
        (JOB, JOB),
        (f"{JOB}@sha256:{'b' * 64}", JOB),
        (f"{JOB}:1@sha256:{'b' * 64}", JOB),
        ("localhost:5000/job", "localhost:5000/job"),
        ("localhost:5000/team/job:3", "localhost:5000/team/job"),
        ("sessionpipe-job:test", "sessionpipe-job"),
    ],
)
def test_image_repository_drops_tag_and_digest_but_keeps_a_registry_port(reference: str, repository: str) -> None:
    assert image_repository(reference) == repository


def test_service_accounts_are_exact_names_or_any() -> None:
    assert service_account_allowed("sessionpipe-job", ("sessionpipe-job",))
    assert not service_account_allowed("sessionpipe-job-admin", ("sessionpipe-job",))
    assert not service_account_allowed("admin", ("sessionpipe-job", "runner"))
    assert service_account_allowed("admin", ("*",))
    assert not service_account_allowed("default", ())


def _spec(**fields: Any) -> SessionProcessorSpec:
    base: dict[str, Any] = {
        "processor": "usage",
        "schedule": "@hourly",
        "sessions": {"claimName": "s"},
        "database": {"claimName": "d"},
    }
    return SessionProcessorSpec.model_validate(base | fields)


def test_without_settings_the_operators_own_image_repository_and_job_account_are_allowed() -> None:
    settings = OperatorSettings.from_env(
        {
            "SESSIONPIPE_OPERATOR_JOB_IMAGE": "registry.example/sessionpipe-job:7",
            "SESSIONPIPE_OPERATOR_JOB_SERVICE_ACCOUNT": "sessionpipe-job",
        }
    )
    assert allowed_images(settings) == ("registry.example/sessionpipe-job",)
    assert allowed_service_accounts(settings) == ("sessionpipe-job",)
    assert refusal(_spec(), settings) is None
    assert refusal(_spec(image="registry.example/sessionpipe-job:8"), settings) is None
    assert refusal(_spec(serviceAccountName="sessionpipe-job"), settings) is None
    # Neither the spec nor the operator names an account: pods get "default", so that one is allowed.
    bare = OperatorSettings.from_env({})
    assert allowed_images(bare) == ("ghcr.io/sessionpipe/sessionpipe-job",)
    assert allowed_service_accounts(bare) == ("default",)
    assert refusal(_spec(serviceAccountName="default"), bare) is None


def test_a_foreign_image_or_account_is_refused_naming_the_field_and_what_is_allowed() -> None:
    settings = OperatorSettings.from_env(
        {
            "SESSIONPIPE_OPERATOR_JOB_IMAGE": "registry.example/sessionpipe-job:7",
            "SESSIONPIPE_OPERATOR_JOB_SERVICE_ACCOUNT": "sessionpipe-job",
        }
    )
    image_message = refusal(_spec(image="registry.example/sessionpipe-job-evil:1"), settings)
    assert image_message is not None
    assert image_message.startswith("spec.image 'registry.example/sessionpipe-job-evil:1' is not allowed")
    assert "registry.example/sessionpipe-job" in image_message
    assert "SESSIONPIPE_OPERATOR_ALLOWED_IMAGES" in image_message
    account_message = refusal(_spec(serviceAccountName="cluster-admin"), settings)
    assert account_message is not None
    assert account_message.startswith("spec.serviceAccountName 'cluster-admin' is not allowed: use sessionpipe-job")
    assert "SESSIONPIPE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS" in account_message


def test_configured_lists_replace_the_defaults() -> None:
    settings = OperatorSettings.from_env(
        {
            "SESSIONPIPE_OPERATOR_JOB_IMAGE": "registry.example/sessionpipe-job:7",
            "SESSIONPIPE_OPERATOR_ALLOWED_IMAGES": " registry.example/team/, ,ghcr.io/sessionpipe/sessionpipe-job ",
            "SESSIONPIPE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS": "runner,runner,reporter",
        }
    )
    assert settings.allowed_images == ("registry.example/team/", "ghcr.io/sessionpipe/sessionpipe-job")
    assert settings.allowed_service_accounts == ("runner", "reporter")
    assert refusal(_spec(image="registry.example/team/x:1", serviceAccountName="reporter"), settings) is None
    assert refusal(_spec(image="registry.example/sessionpipe-job:7"), settings) is not None
    assert refusal(_spec(serviceAccountName="default"), settings) is not None


def test_star_allows_any_image_and_any_account() -> None:
    settings = OperatorSettings.from_env(
        {"SESSIONPIPE_OPERATOR_ALLOWED_IMAGES": "*", "SESSIONPIPE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS": "*"}
    )
    assert refusal(_spec(image="docker.io/library/busybox:1", serviceAccountName="admin"), settings) is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SESSIONPIPE_OPERATOR_ALLOWED_IMAGES", "ghcr.io/a/ b"),
        ("SESSIONPIPE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS", "runner,Not_A_Name"),
    ],
)
def test_a_bad_allowed_list_is_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        OperatorSettings.from_env({variable: value})
