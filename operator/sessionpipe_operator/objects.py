"""Objects as the operator reads them from the API server: metadata, and a SessionProcessor whole.

The API server's bodies are plain dicts; these types give their metadata and the SessionProcessor's
spec names and types once, where they are read, instead of string keys at every use. They are
lenient where :mod:`sessionpipe_operator.models` is strict: they describe what the API server
already accepted, and they are no part of the CRD.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from sessionpipe_contract import API_GROUP, API_VERSION, KIND
from sessionpipe_operator import status as status_rules
from sessionpipe_operator.models import SessionProcessorSpec

API_VERSION_FULL = f"{API_GROUP}/{API_VERSION}"


class _Read(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class OwnerReference(_Read):
    api_version: str = ""
    kind: str = ""
    name: str = ""
    uid: str = ""
    controller: bool | None = None


class ObjectMeta(_Read):
    """The fields of ``metadata`` the operator reads."""

    name: str = ""
    namespace: str = ""
    uid: str = ""
    generation: int | None = None
    resource_version: str = ""
    creation_timestamp: str = ""
    deletion_timestamp: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    owner_references: list[OwnerReference] = Field(default_factory=list)

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ObjectMeta:
        """The metadata of the object ``obj`` (a body as the API server returned it)."""
        return cls.model_validate(obj.get("metadata") or {})

    def owned_by(self, uid: str) -> bool:
        """Whether an owner reference names the object with ``uid``."""
        return any(reference.uid == uid for reference in self.owner_references)

    @property
    def controller_uid(self) -> str:
        """The uid of the controlling owner (the first owner if none is marked); ``""`` without one."""
        controlling = [reference for reference in self.owner_references if reference.controller]
        references = controlling or self.owner_references
        return references[0].uid if references else ""


@dataclass(frozen=True)
class SessionProcessor:
    """A SessionProcessor as read: its metadata, its spec parsed (or why it cannot be), its status.

    ``body`` is the object as read, kept for what needs the manifest itself: an Event's reference,
    a status write carrying its resourceVersion.
    """

    body: dict[str, Any]
    meta: ObjectMeta
    spec: SessionProcessorSpec | None
    spec_error: str | None
    status: dict[str, Any]

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> SessionProcessor:
        plain = dict(body)
        spec, error = parse_spec(plain.get("spec") or {})
        return cls(plain, ObjectMeta.of(plain), spec, error, dict(plain.get("status") or {}))

    @property
    def created(self) -> datetime | None:
        return status_rules.parse_time(self.meta.creation_timestamp)

    @property
    def invalid(self) -> str | None:
        """The message of its true ``InvalidSpec`` condition, as stored."""
        return status_rules.current_invalid(self.status)

    def owner_reference(self) -> dict[str, str]:
        """What a child's ``ownerReferences`` entry names of this processor."""
        return {"apiVersion": API_VERSION_FULL, "kind": KIND, "name": self.meta.name, "uid": self.meta.uid}


def parse_spec(spec: Mapping[str, Any]) -> tuple[SessionProcessorSpec | None, str | None]:
    """The spec, or ``None`` and what is wrong with it (up to three problems, each naming its field)."""
    try:
        return SessionProcessorSpec.model_validate(dict(spec)), None
    except pydantic.ValidationError as error:
        return None, validation_message(error)


def valid_spec(spec: Mapping[str, Any]) -> SessionProcessorSpec | None:
    """The spec, or ``None`` if it does not validate."""
    return parse_spec(spec)[0]


def validation_message(error: pydantic.ValidationError) -> str:
    problems = [f"spec.{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()[:3]]
    return "; ".join(problems)
