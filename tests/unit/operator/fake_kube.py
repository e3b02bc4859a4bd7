"""An in-memory stand-in for :class:`sessionpipe_operator.k8s.KubeClient`, for the operator's unit tests.

It answers exactly the calls ``KubeClient`` offers (get, list, create, apply, merge_patch, replace,
delete) from a dict of objects keyed by path, the way the API server would for what the operator
relies on: every write bumps ``metadata.resourceVersion``; a write that carries a stale
resourceVersion fails with 409 Conflict; ``/status`` writes change the status only, other writes
everything but the status; a spec change bumps ``metadata.generation``; ``generateName`` gets a
suffix; a deletion takes the objects it owns along (garbage collection, foreground or not).

What it does not do: admission, schema validation and defaulting, field ownership of server-side
apply (an apply merges the manifest into the object and takes every field it names), watches. Those
are the cluster tests' business (tests/cluster), on the real API server.

``before(method, path, action)`` runs ``action`` once just before a matching call: the way a test
puts someone else's write (a conflicting status update, a Job of the CronJob controller) between
two steps of the operator.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sessionpipe_operator.k8s import ApiError, KubeClient

SUBRESOURCES = ("status",)


@dataclass
class _Hook:
    method: str
    path: str
    action: Callable[[], None]
    times: int


class FakeKube(KubeClient):
    """Objects by path; see the module docstring for what it emulates."""

    def __init__(self) -> None:
        super().__init__(api_client=None)
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)
        self._names = itertools.count(1)
        self._clock = itertools.count(0)
        #: Creation times: a second apart from now, so the order of creation is the order of age.
        self.start = datetime.now(UTC).replace(microsecond=0)
        self._hooks: list[_Hook] = []

    # --- test controls -------------------------------------------------------------------------
    def before(self, method: str, path: str, action: Callable[[], None], *, times: int = 1) -> None:
        """Run ``action`` before the next ``times`` calls of ``method`` on exactly ``path``."""
        self._hooks.append(_Hook(method, path, action, times))

    def edit(self, path: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Someone else's write: ``change`` mutates the stored object in place; its version moves on."""
        return self._write(self._stored(path), change)

    def put(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Store ``body`` at the object path ``path`` as if created there (name and namespace from the path)."""
        collection, name, _ = _split(path)
        manifest = copy.deepcopy(dict(body))
        manifest.setdefault("metadata", {})["name"] = name
        return self._create(collection, manifest)

    def calls_of(self, method: str) -> list[str]:
        return [path for called, path in self.calls if called == method]

    # --- KubeClient ----------------------------------------------------------------------------
    def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        raise NotImplementedError(f"FakeKube answers KubeClient's named calls only, not a raw {method} {path}")

    def close(self) -> None:
        pass

    def get(self, path: str) -> dict[str, Any] | None:
        self._call("GET", path)
        stored = self.objects.get(_object_path(path))
        if stored is None:
            return None
        return copy.deepcopy(stored)

    def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        self._call("LIST", path)
        wanted = _selector(label_selector)
        found = []
        for object_path, stored in sorted(self.objects.items()):
            if _split(object_path)[0] != path:
                continue
            labels = stored.get("metadata", {}).get("labels") or {}
            if all(labels.get(key) == value for key, value in wanted.items()):
                found.append(copy.deepcopy(stored))
        return found

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._call("POST", path)
        return self._create(path, copy.deepcopy(dict(body)))

    def apply(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._call("APPLY", path)
        stored = self.objects.get(path)
        if stored is None:
            return self.put(path, body)
        manifest = copy.deepcopy(dict(body))
        manifest.get("metadata", {}).pop("resourceVersion", None)
        return self._write(stored, lambda obj: _merge_into(obj, {k: v for k, v in manifest.items() if k != "status"}))

    def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._call("PATCH", path)
        _, _, subresource = _split(path)
        stored = self._stored(path)
        patch = copy.deepcopy(dict(body))
        self._check_version(stored, patch.get("metadata", {}).pop("resourceVersion", None))
        if subresource == "status":
            patch = {"status": patch.get("status")} if "status" in patch else {}
        else:
            patch.pop("status", None)
        return self._write(stored, lambda obj: _merge_patch(obj, patch))

    def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._call("PUT", path)
        _, _, subresource = _split(path)
        stored = self._stored(path)
        manifest = copy.deepcopy(dict(body))
        self._check_version(stored, manifest.get("metadata", {}).get("resourceVersion"))
        if subresource == "status":
            return self._write(stored, lambda obj: obj.update(status=manifest.get("status") or {}))
        return self._write(stored, lambda obj: _replace_all_but_status(obj, manifest))

    def delete(self, path: str, *, propagation: str = "Background") -> None:
        self._call("DELETE", path)
        stored = self.objects.pop(_object_path(path), None)
        if stored is None:
            return
        uid = stored["metadata"]["uid"]
        for dependent, owned in list(self.objects.items()):
            if any(ref.get("uid") == uid for ref in owned.get("metadata", {}).get("ownerReferences") or []):
                self.delete(dependent, propagation=propagation)

    # --- the store -----------------------------------------------------------------------------
    def _call(self, method: str, path: str) -> None:
        self.calls.append((method, path))
        for hook in list(self._hooks):
            if hook.method == method and hook.path == path and hook.times > 0:
                hook.times -= 1
                if hook.times == 0:
                    self._hooks.remove(hook)
                hook.action()

    def _create(self, collection: str, manifest: dict[str, Any]) -> dict[str, Any]:
        metadata = manifest.setdefault("metadata", {})
        if not metadata.get("name"):
            metadata["name"] = f"{metadata['generateName']}{next(self._names):05d}"
        namespace = _namespace_of(collection)
        metadata["namespace"] = namespace
        path = f"{collection}/{metadata['name']}"
        if path in self.objects:
            raise ApiError(409, "AlreadyExists", f"{metadata['name']} already exists")
        metadata["uid"] = f"uid-{next(self._uids)}"
        metadata["creationTimestamp"] = _stamp(self.start + timedelta(seconds=next(self._clock)))
        metadata["generation"] = 1
        metadata.pop("resourceVersion", None)
        self.objects[path] = manifest
        self._bump(manifest, spec_changed=False)
        return copy.deepcopy(manifest)

    def _write(self, stored: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """``change`` the stored object in place; a new resourceVersion, a new generation if the spec changed."""
        before = copy.deepcopy(stored.get("spec"))
        change(stored)
        self._bump(stored, spec_changed=stored.get("spec") != before)
        return copy.deepcopy(stored)

    def _stored(self, path: str) -> dict[str, Any]:
        stored = self.objects.get(_object_path(path))
        if stored is None:
            raise ApiError(404, "NotFound", f"{path} not found")
        return stored

    def _check_version(self, stored: Mapping[str, Any], version: Any) -> None:
        if version is not None and version != stored["metadata"]["resourceVersion"]:
            raise ApiError(
                409, "Conflict", "the object has been modified; please apply your changes to the latest version"
            )

    def _bump(self, stored: dict[str, Any], *, spec_changed: bool) -> None:
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        if spec_changed:
            stored["metadata"]["generation"] = int(stored["metadata"].get("generation") or 0) + 1


# --- paths and patches -----------------------------------------------------------------------------
def _split(path: str) -> tuple[str, str, str | None]:
    """(collection path, name, subresource) of an object path under ``/namespaces/<ns>/``."""
    head, _, rest = path.partition("/namespaces/")
    parts = rest.split("/")
    if len(parts) < 3:
        raise ValueError(f"not an object path: {path}")
    subresource = parts[3] if len(parts) > 3 and parts[3] in SUBRESOURCES else None
    return f"{head}/namespaces/{parts[0]}/{parts[1]}", parts[2], subresource


def _object_path(path: str) -> str:
    collection, name, _ = _split(path)
    return f"{collection}/{name}"


def _namespace_of(collection: str) -> str:
    return collection.partition("/namespaces/")[2].split("/")[0]


def _selector(text: str | None) -> dict[str, str]:
    """Equality label selectors only (``a=b,c=d``): what the operator uses."""
    wanted = {}
    for part in (text or "").split(","):
        if part.strip():
            key, _, value = part.partition("=")
            wanted[key.strip()] = value.strip()
    return wanted


def _merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """RFC 7386: maps merge, ``null`` deletes, anything else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _merge_into(target: dict[str, Any], manifest: Mapping[str, Any]) -> None:
    """Apply's approximation: every field the manifest names takes its value; maps merge."""
    for key, value in manifest.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _replace_all_but_status(stored: dict[str, Any], manifest: Mapping[str, Any]) -> None:
    kept = {key: stored["metadata"][key] for key in ("uid", "creationTimestamp", "namespace", "name")}
    status = stored.get("status")
    stored.clear()
    stored.update({key: value for key, value in manifest.items() if key != "status"})
    stored["metadata"].update(kept)
    if status is not None:
        stored["status"] = status


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
