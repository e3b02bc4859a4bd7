"""A small synchronous REST client for the few Kubernetes calls the handlers make.

Kopf watches and patches the SessionProcessors itself; everything else the operator does (apply a
CronJob, create a run-now Job, read a pod's termination message, write a CR's status) goes through
:class:`KubeClient`. It speaks plain JSON manifests (dicts) over the official client's connection
and credentials, so manifests rendered by :mod:`sessionpipe_operator.render` are sent exactly as
rendered, with no model round trip that could drop or rename a field.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from sessionpipe_contract import API_GROUP, API_VERSION, PLURAL

FIELD_MANAGER = "sessionpipe-operator"
REQUEST_TIMEOUT_SECONDS = 30.0

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class ApiError(Exception):
    """The API server answered with an error status; ``message`` is its own explanation."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def invalid(self) -> bool:
        """422 Unprocessable Entity: the object itself is wrong; retrying cannot help."""
        return self.status == 422


# --- paths --------------------------------------------------------------------------------------
def cronjob_path(namespace: str, name: str | None = None, *, subresource: str | None = None) -> str:
    return _path("/apis/batch/v1", namespace, "cronjobs", name, subresource)


def job_path(namespace: str, name: str | None = None) -> str:
    return _path("/apis/batch/v1", namespace, "jobs", name, None)


def pod_path(namespace: str) -> str:
    return _path("/api/v1", namespace, "pods", None, None)


def sessionprocessor_path(namespace: str | None, name: str | None = None, *, subresource: str | None = None) -> str:
    return _path(f"/apis/{API_GROUP}/{API_VERSION}", namespace, PLURAL, name, subresource)


def _path(prefix: str, namespace: str | None, plural: str, name: str | None, subresource: str | None) -> str:
    path = prefix
    if namespace is not None:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{quote(name, safe='')}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


# --- the client ---------------------------------------------------------------------------------
class KubeClient:
    """JSON in, JSON out; raises :class:`ApiError` for any non-2xx answer.

    ``requests`` counts the calls made, by HTTP verb, for the operator's metrics: a cheap, honest
    view of how much API traffic the operator itself generates.
    """

    def __init__(self, api_client: Any, *, on_request: Callable[[str], None] | None = None) -> None:
        self._api = api_client
        self._on_request = on_request
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, *, on_request: Callable[[str], None] | None = None
    ) -> KubeClient:
        """The in-cluster service account inside a pod, else the current kubeconfig (``KUBECONFIG``)."""
        from kubernetes import client
        from kubernetes import config as kube_config

        environ = os.environ if environ is None else environ
        configuration = client.Configuration()
        config: Any = kube_config
        if environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(client_configuration=configuration)
        return cls(client.ApiClient(configuration), on_request=on_request)

    def close(self) -> None:
        self._api.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = JSON,
    ) -> dict[str, Any]:
        """One call; the decoded JSON answer (``{}`` for an empty one)."""
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        with self._lock:
            self.requests[method] += 1
        if self._on_request is not None:
            self._on_request(method)
        response = self._api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
        raw = response.read()
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
        if not 200 <= response.status < 300:
            raise _api_error(response.status, text)
        if not text:
            return {}
        decoded: dict[str, Any] = json.loads(text)
        return decoded

    def get(self, path: str) -> dict[str, Any] | None:
        """The object, or ``None`` when it does not exist."""
        try:
            return self.request("GET", path)
        except ApiError as error:
            if error.not_found:
                return None
            raise

    def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        items: list[dict[str, Any]] = self.request("GET", path, query=query).get("items") or []
        return items

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body=dict(body))

    def apply(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as the operator's field manager, taking over fields someone else changed."""
        return self.request(
            "PATCH",
            path,
            body=dict(body),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type=APPLY_PATCH,
        )

    def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body=dict(body), content_type=MERGE_PATCH)

    def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PUT", path, body=dict(body))

    def delete(self, path: str, *, propagation: str = "Background") -> None:
        """Delete; an object that is already gone is not an error."""
        try:
            self.request("DELETE", path, body={"propagationPolicy": propagation})
        except ApiError as error:
            if not error.not_found:
                raise


def _api_error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    return ApiError(status, str(payload.get("reason") or ""), str(payload.get("message") or text[:500]))
