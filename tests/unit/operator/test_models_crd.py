"""The CRD is generated from the pydantic models, committed in sync, structural, and documented."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from sessionpipe_operator import crd
from sessionpipe_operator.models import SessionProcessorSpec, SessionProcessorStatus

REPOSITORY = Path(__file__).resolve().parents[3]
MINIMAL_SPEC: dict[str, Any] = {
    "processor": "usage",
    "schedule": "@daily",
    "sessions": {"claimName": "transcripts"},
    "database": {"claimName": "warehouse"},
}


def schema() -> dict[str, Any]:
    version = crd.build_crd()["spec"]["versions"][0]
    return dict(version["schema"]["openAPIV3Schema"])


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below ``node``, with a readable path."""
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("relative", crd.CRD_PATHS, ids=str)
def test_committed_crd_is_the_one_generated_from_the_models(relative: Path) -> None:
    committed = (REPOSITORY / relative).read_text(encoding="utf-8")
    assert committed == crd.render_crd_yaml(), f"{relative} is out of date: run `make crd`"
    assert yaml.safe_load(committed) == crd.build_crd()


def test_crd_command_writes_both_copies_and_check_spots_an_edited_one(tmp_path: Path) -> None:
    assert crd.main(["--check", "--root", str(tmp_path)]) == 1  # nothing written yet
    assert crd.main(["--root", str(tmp_path)]) == 0
    assert crd.main(["--check", "--root", str(tmp_path)]) == 0
    chart_copy = tmp_path / crd.CRD_PATHS[1]
    chart_copy.write_text(chart_copy.read_text().replace("maxLength: 52", "maxLength: 63"))
    assert crd.main(["--check", "--root", str(tmp_path)]) == 1
    assert crd.main(["--root", str(tmp_path)]) == 0
    assert (tmp_path / crd.CRD_PATHS[0]).read_bytes() == chart_copy.read_bytes()


def test_every_field_of_the_schema_is_described() -> None:
    fields = [(path, node) for path, node in nodes(schema()) if path and not path.endswith(("[]", "{}"))]
    undocumented = [
        path
        for path, node in fields
        if not path.startswith(".metadata") and not str(node.get("description", "")).strip()
    ]
    assert len(fields) > 60
    assert undocumented == []


def test_schema_is_structural() -> None:
    problems = []
    for path, node in nodes(schema()):
        if path.startswith(".metadata."):
            continue
        for forbidden in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "nullable"):
            if forbidden in node:
                problems.append(f"{path}: {forbidden}")
        typed = "type" in node or node.get("x-kubernetes-int-or-string") is True
        if not typed:
            problems.append(f"{path}: no type")
        if "additionalProperties" in node and (
            "properties" in node or not isinstance(node["additionalProperties"], dict)
        ):
            problems.append(f"{path}: additionalProperties must be a schema, never beside properties")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{path}: an array needs items")
        if node.get("x-kubernetes-preserve-unknown-fields") and node.get("type") != "object":
            problems.append(f"{path}: preserve-unknown-fields only on objects")
    assert problems == []


def test_only_free_form_fields_keep_unknown_fields() -> None:
    preserved = sorted(path for path, node in nodes(schema()) if node.get("x-kubernetes-preserve-unknown-fields"))
    assert preserved == [".spec.config", ".spec.podTemplate.affinity", ".spec.podTemplate.tolerations[]"]
    quantities = sorted(path for path, node in nodes(schema()) if node.get("x-kubernetes-int-or-string"))
    assert quantities == [".spec.resources.limits{}", ".spec.resources.requests{}"]


def apply_schema_defaults(value: Any, node: dict[str, Any]) -> Any:
    """What the API server's defaulting does with ``value``: fill absent properties that have a default."""
    if not isinstance(value, dict) or "properties" not in node:
        return value
    result = dict(value)
    for name, child in node["properties"].items():
        if name not in result and "default" in child:
            result[name] = copy.deepcopy(child["default"])
        if name in result:
            result[name] = apply_schema_defaults(result[name], child)
    return result


def test_schema_defaults_are_the_model_defaults() -> None:
    spec_schema = schema()["properties"]["spec"]
    defaulted = apply_schema_defaults(copy.deepcopy(MINIMAL_SPEC), spec_schema)
    by_model = SessionProcessorSpec.model_validate(MINIMAL_SPEC).model_dump(by_alias=True, exclude_none=True)
    assert defaulted == by_model
    # A spec stored with the API server's defaults reads back as the same spec.
    assert SessionProcessorSpec.model_validate(defaulted) == SessionProcessorSpec.model_validate(MINIMAL_SPEC)


def test_required_fields_and_names() -> None:
    root = schema()
    assert root["required"] == ["spec"]
    spec = root["properties"]["spec"]
    assert sorted(spec["required"]) == ["database", "processor", "schedule", "sessions"]
    assert spec["properties"]["sessions"]["required"] == ["claimName"]
    assert spec["properties"]["database"]["required"] == ["claimName"]
    assert root["properties"]["metadata"]["properties"]["name"]["maxLength"] == 52


def test_crd_identity_subresource_and_printer_columns() -> None:
    manifest = crd.build_crd()
    assert manifest["metadata"]["name"] == "sessionprocessors.sessionpipe.io"
    names = manifest["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "SessionProcessor",
        "sessionprocessors",
        ["sproc"],
        ["sessionpipe"],
    )
    assert manifest["spec"]["scope"] == "Namespaced"
    version = manifest["spec"]["versions"][0]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns == [
        "Processor",
        "Schedule",
        "Suspend",
        "Active",
        "Progress",
        "Last Success",
        "Last Outcome",
        "Processed",
        "Errors",
        "Ready",
        "Jobs",
        "Age",
    ]
    # -o wide adds the running Jobs' names
    assert [column["name"] for column in version["additionalPrinterColumns"] if column.get("priority")] == ["Jobs"]
    # Every column points at a field the schema has.
    properties = version["schema"]["openAPIV3Schema"]["properties"]
    for column in version["additionalPrinterColumns"]:
        head, *rest = re.findall(r"\.(\w+)(?:\[[^\]]*\])?", column["jsonPath"])
        if head == "metadata":
            continue
        node = properties[head]
        for part in rest:
            node = node["items"] if node["type"] == "array" else node
            node = node["properties"][part]
        if column["type"] in ("integer", "boolean"):  # a count column shows a count, not a list
            assert node["type"] == column["type"], column


def _with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL_SPEC)
    for dotted, value in changes.items():
        target = spec
        *parents, leaf = dotted.split("__")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return spec


#: Specs the API server refuses through the schema; the models refuse them too, naming the same field.
REFUSED: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("prose schedule", _with(schedule="every day at noon"), ("schedule",)),
    ("three cron fields", _with(schedule="* * *"), ("schedule",)),
    ("processor with spaces", _with(processor="Usage Report!"), ("processor",)),
    ("negative history", _with(history__successful=-1), ("history", "successful")),
    ("zero timeout", _with(run__timeoutSeconds=0), ("run", "timeoutSeconds")),
    ("negative session cap", _with(run__maxSessionsPerRun=-1), ("run", "maxSessionsPerRun")),
    ("zero attempts", _with(run__maxAttemptsPerSession=0), ("run", "maxAttemptsPerSession")),
    ("negative lease wait", _with(database__leaseWaitSeconds=-5), ("database", "leaseWaitSeconds")),
    ("lease wait over a day", _with(database__leaseWaitSeconds=86401), ("database", "leaseWaitSeconds")),
    ("relative mount path", _with(sessions__mountPath="data/sessions"), ("sessions", "mountPath")),
    ("mount over /tmp", _with(sessions__mountPath="/tmp"), ("sessions", "mountPath")),
    ("subPath escaping the volume", _with(sessions__subPath="a/../../etc"), ("sessions", "subPath")),
    ("absolute database path", _with(database__path="/etc/passwd"), ("database", "path")),
    ("claim name with capitals", _with(database__claimName="Ware_House"), ("database", "claimName")),
    ("suspend as a string", _with(suspend="yes"), ("suspend",)),
    ("unknown field", _with(colour="blue"), ("colour",)),
    ("unknown nested field", _with(run__retries=2), ("run", "retries")),
    ("model without a key", _with(llm={"model": "claude-sonnet-4-5"}), ("llm",)),
]


@pytest.mark.parametrize(("case", "spec", "field"), REFUSED, ids=[case for case, _, _ in REFUSED])
def test_models_refuse_what_the_schema_refuses(case: str, spec: dict[str, Any], field: tuple[str, ...]) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        SessionProcessorSpec.model_validate(spec)
    locations = [tuple(str(part) for part in error["loc"]) for error in caught.value.errors()]
    assert any(location[: len(field)] == field for location in locations), f"{case}: {locations}"


def test_schema_carries_a_check_for_each_refused_field() -> None:
    """Each field the models refuse above has a bound, pattern or CEL rule in the CRD as well."""
    spec_schema = schema()["properties"]["spec"]
    checks = ("minimum", "maximum", "pattern", "x-kubernetes-validations", "type")
    for case, _, field in REFUSED:
        if field in (("colour",), ("run", "retries")):
            continue  # unknown fields: refused by strict field validation, not by a rule
        node = spec_schema
        for part in field:
            node = node["properties"][part]
        assert any(key in node for key in checks if key != "type") or node.get("type") == "boolean", case


def test_status_model_accepts_what_the_schema_describes() -> None:
    status_schema = schema()["properties"]["status"]
    assert set(status_schema["properties"]) == {
        field.alias for field in SessionProcessorStatus.model_fields.values() if field.alias
    }
    assert status_schema["properties"]["recentRuns"]["maxItems"] == 10


def test_conditions_are_a_map_keyed_on_type() -> None:
    conditions = schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]  # a map key must be required


def test_printer_columns_show_the_effective_schedule_progress_and_job_names_as_text() -> None:
    columns = {column["name"]: column for column in crd.build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Schedule"]["jsonPath"] == ".status.schedule"  # spec.schedule keeps what the user wrote
    assert columns["Progress"]["jsonPath"] == ".status.progress"
    assert (columns["Jobs"]["jsonPath"], columns["Jobs"]["priority"]) == (".status.activeJobs", 1)
    status = schema()["properties"]["status"]["properties"]
    assert status["activeJobs"]["type"] == status["progress"]["type"] == status["schedule"]["type"] == "string"
