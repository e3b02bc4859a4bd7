"""``spec.config`` is bounded where it is carried: the job pod's environment and kopf's annotation.

A config that passes the schema but cannot reach the runner (Linux refuses an environment string
over 128 KiB; the API server refuses annotations over 256 KiB together) must be ``InvalidSpec``
with a message naming the limit, never a CronJob whose every Job fails.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest

from sessionpipe_contract import ENV_CONFIG
from sessionpipe_operator.models import CONFIG_MAX_BYTES, SessionProcessorSpec, config_size
from sessionpipe_operator.objects import validation_message
from sessionpipe_operator.render import build_cronjob
from sessionpipe_operator.settings import OperatorSettings

OWNER = {"apiVersion": "sessionpipe.io/v1alpha1", "kind": "SessionProcessor", "name": "big", "uid": "uid-1"}
#: Linux's MAX_ARG_STRLEN: one "NAME=value" string of a process's environment, with its NUL.
LINUX_MAX_ARG_STRLEN = 32 * 4096
#: The API server's limit on all annotations of one object together.
ANNOTATIONS_MAX_BYTES = 256 * 1024


def spec_with(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "processor": "usage",
        "schedule": "@hourly",
        "sessions": {"claimName": "transcripts"},
        "database": {"claimName": "warehouse"},
        "config": config,
    }


def padded(size: int, character: str = "a") -> dict[str, Any]:
    """A config whose carried size is exactly ``size`` bytes (``{"blob":"…"}`` is 11 bytes of frame)."""
    escaped = len(json.dumps(character))  # "ü" is carried as \\u00fc: 6 bytes, plus 2 quotes
    unit = escaped - 2
    count, remainder = divmod(size - 11, unit)
    assert remainder == 0, "choose a size the character divides"
    return {"blob": character * count}


def carried_env_value(config: dict[str, Any]) -> str:
    spec = SessionProcessorSpec.model_validate(spec_with(config))
    cronjob = build_cronjob("big", "team-a", OWNER, spec, OperatorSettings())
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    return next(str(variable["value"]) for variable in container["env"] if variable["name"] == ENV_CONFIG)


def kopf_annotation_form(config: dict[str, Any]) -> str:
    """How kopf writes its last-handled-configuration (``json.dumps`` with compact separators)."""
    return json.dumps(config, separators=(",", ":"))


def test_the_issues_51_kb_of_umlauts_is_invalid_naming_the_limit() -> None:
    config = {"blob": "ü" * 51200}
    assert config_size(config) > LINUX_MAX_ARG_STRLEN  # what made every Job fail before
    with pytest.raises(pydantic.ValidationError) as raised:
        SessionProcessorSpec.model_validate(spec_with(config))
    message = validation_message(raised.value)
    assert message.startswith("spec.config:")
    assert f"{config_size(config)} bytes" in message
    assert f"limit of {CONFIG_MAX_BYTES} bytes" in message


@pytest.mark.parametrize("character", ["a", "ü", "😀"])
def test_the_limit_is_exact_in_the_form_the_pod_and_kopf_carry(character: str) -> None:
    unit = len(json.dumps(character)) - 2
    largest = CONFIG_MAX_BYTES - (CONFIG_MAX_BYTES - 11) % unit
    config = padded(largest, character)
    SessionProcessorSpec.model_validate(spec_with(config))
    assert len(carried_env_value(config).encode()) == config_size(config) == largest
    assert len(kopf_annotation_form(config).encode()) == largest
    with pytest.raises(pydantic.ValidationError):
        SessionProcessorSpec.model_validate(spec_with({"blob": config["blob"] + character}))


def test_the_largest_config_fits_the_environment_and_the_annotations_with_room_to_spare() -> None:
    config = padded(CONFIG_MAX_BYTES - (CONFIG_MAX_BYTES - 11) % 6, "ü")
    env_string = f"{ENV_CONFIG}={carried_env_value(config)}".encode() + b"\0"
    assert len(env_string) * 2 <= LINUX_MAX_ARG_STRLEN
    # kopf's annotation plus kubectl's last-applied-configuration, which carries the spec again
    # (Go escapes <, > and & as \\u003c: at most 6 bytes per byte counted here).
    assert CONFIG_MAX_BYTES + 6 * CONFIG_MAX_BYTES < ANNOTATIONS_MAX_BYTES
