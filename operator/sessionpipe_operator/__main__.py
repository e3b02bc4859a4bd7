"""``sessionpipe-operator``: run the operator against the current kubeconfig, or in-cluster in a pod.

Settings come from the environment (see :mod:`sessionpipe_operator.settings`); a bad value ends the
process at once with one line on stderr and exit code 2, before anything touches the cluster.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import kopf

from sessionpipe_operator import handlers, health, metrics
from sessionpipe_operator.settings import OperatorSettings

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sessionpipe-operator",
        description="Reconcile SessionProcessor resources into CronJobs (settings: SESSIONPIPE_OPERATOR_* env).",
    )
    parser.add_argument("--verbose", action="store_true", help="log kopf's own decisions too")
    args = parser.parse_args(argv)
    try:
        settings = OperatorSettings.from_env(os.environ)
    except ValueError as error:
        print(f"sessionpipe-operator: error: {error}", file=sys.stderr)
        return EXIT_USAGE

    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=args.verbose, log_format=log_format, log_prefix=True)
    if not args.verbose:
        # kopf logs every event of every watched Job at DEBUG/INFO; our handlers log what matters.
        logging.getLogger("kopf.objects").setLevel(logging.INFO)
    metrics.serve(settings.metrics_port)
    namespaces = list(settings.namespaces)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=health.liveness_endpoint(settings.health_port),
        settings=handlers.operator_settings(settings),
        memo=kopf.Memo(state=handlers.OperatorState(settings=settings)),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
