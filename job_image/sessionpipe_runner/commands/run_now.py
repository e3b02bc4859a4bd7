"""``sessionpipe run-now NAME [-n NAMESPACE]``: ask the operator for an immediate run.

It only sets the annotation ``sessionpipe.io/run-now`` on the SessionProcessor to a fresh token; the
operator does the rest (starts a Job from the CronJob's template, or records a ``RunSkipped`` Event
when a run of that processor is still going). The same thing by hand::

    kubectl annotate sessionprocessor NAME sessionpipe.io/run-now="$(date +%s)" --overwrite
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sessionpipe_contract import ANNOTATION_RUN_NOW, API_GROUP, API_VERSION, EXIT_FAILED, EXIT_OK, EXIT_USAGE, PLURAL

NAME = "run-now"
DESCRIPTION = (
    "Ask the operator to start a run of a SessionProcessor now, by setting the sessionpipe.io/run-now "
    "annotation to a fresh token; the operator starts a Job from its CronJob, or records a RunSkipped "
    "Event while a run is going."
)
EXAMPLES = """example:
  sessionpipe run-now usage -n sessionpipe"""
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class RunNowError(Exception):
    """The request could not be made; the message says why and what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the SessionProcessor to run now")
    parser.add_argument(
        "-n",
        "--namespace",
        metavar="NAMESPACE",
        help="its namespace (default: the kubeconfig context's, or the pod's, or 'default')",
    )
    parser.add_argument(
        "--kubeconfig", type=Path, metavar="FILE", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )


def new_token(now: datetime | None = None) -> str:
    """A token that sorts by time and never repeats: ``20250101T120000Z-1a2b3c``."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def run_now(name: str, namespace: str | None = None, kubeconfig: Path | str | None = None) -> str:
    """Set a fresh run-now token on the SessionProcessor; return the token.

    Raises :class:`RunNowError` when the cluster cannot be reached or the resource does not exist.
    """
    api_client, namespace = _api_client(namespace, kubeconfig)
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    token = new_token()
    api: Any = client.CustomObjectsApi(api_client)
    try:
        api.patch_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            name,
            {"metadata": {"annotations": {ANNOTATION_RUN_NOW: token}}},
            _content_type="application/merge-patch+json",
        )
    except ApiException as error:
        if error.status == 404:
            raise RunNowError(f"no SessionProcessor {name!r} in namespace {namespace!r}") from None
        if error.status == 403:
            raise RunNowError(f"not allowed to annotate SessionProcessor {namespace}/{name}: {error.reason}") from None
        raise RunNowError(f"the API server refused the request: {error.status} {error.reason}") from None
    finally:
        api_client.close()
    return token


def _api_client(namespace: str | None, kubeconfig: Path | str | None) -> tuple[Any, str]:
    try:
        from kubernetes import client
        from kubernetes import config as kube_config
    except ImportError:
        raise RunNowError("run-now needs the 'kubernetes' package: pip install 'sessionpipe[job]'") from None
    config: Any = kube_config
    configuration = client.Configuration()
    context_namespace: str | None = None
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            if IN_CLUSTER_NAMESPACE.is_file():
                context_namespace = IN_CLUSTER_NAMESPACE.read_text().strip() or None
        else:
            config_file = str(kubeconfig) if kubeconfig is not None else None
            config.load_kube_config(config_file=config_file, client_configuration=configuration)
            _, active = config.list_kube_config_contexts(config_file=config_file)
            context_namespace = (active or {}).get("context", {}).get("namespace")
    except Exception as error:
        raise RunNowError(f"cannot configure the Kubernetes client: {error}") from None
    return client.ApiClient(configuration), namespace or context_namespace or "default"


def handle(args: argparse.Namespace) -> int:
    """The ``run-now`` command of the ``sessionpipe`` CLI."""
    try:
        token = run_now(args.name, args.namespace, args.kubeconfig)
    except RunNowError as error:
        print(f"sessionpipe: error: {error}", file=sys.stderr)
        return EXIT_USAGE if "no SessionProcessor" in str(error) else EXIT_FAILED
    print(f"requested a run of {args.name} (token {token}); see 'kubectl describe sessionprocessor {args.name}'")
    return EXIT_OK
