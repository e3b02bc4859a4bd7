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

from sessionpipe_operator import handlers, health, leader, metrics
from sessionpipe_operator.k8s import KubeClient
from sessionpipe_operator.settings import OperatorSettings
from sessionpipe_operator.state import OperatorState

EXIT_USAGE = 2
#: The leader could not renew its Lease in time or found it taken: it stops acting at once.
EXIT_LEADERSHIP_LOST = 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sessionpipe-operator",
        description="Reconcile SessionProcessor resources into CronJobs (settings: SESSIONPIPE_OPERATOR_* env).",
    )
    parser.add_argument("--verbose", action="store_true", help="log kopf's own decisions too")
    args = parser.parse_args(argv)
    try:
        settings = OperatorSettings.from_env(os.environ)
        election = leader.LeaderSettings.from_env(os.environ)
    except ValueError as error:
        print(f"sessionpipe-operator: error: {error}", file=sys.stderr)
        return EXIT_USAGE

    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=args.verbose, log_format=log_format, log_prefix=True)
    if not args.verbose:
        # kopf logs every event of every watched Job at DEBUG/INFO; our handlers log what matters.
        logging.getLogger("kopf.objects").setLevel(logging.INFO)
    metrics.serve(settings.metrics_port)
    elector = _lead(election, settings.health_port) if election.enabled else None
    namespaces = list(settings.namespaces)
    try:
        kopf.run(
            standalone=True,  # kopf's peering pauses instances of equal priority: the Lease decides instead
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=health.liveness_endpoint(settings.health_port),
            settings=handlers.operator_settings(settings),
            memo=kopf.Memo(state=OperatorState(settings=settings)),
        )
    finally:
        if elector is not None:
            elector.release()
    return 0


def _lead(election: leader.LeaderSettings, health_port: int) -> leader.LeaderElector:
    """Wait as a standby (alive on ``/healthz``) until this process holds the Lease; keep renewing it."""
    gauge = metrics.LEADER.labels(identity=election.identity)
    elector = leader.LeaderElector(
        KubeClient.from_environment(on_request=metrics.count_request),
        election,
        on_change=lambda leading: gauge.set(1 if leading else 0),
    )
    gauge.set(0)
    with health.standby_endpoint(health_port):
        elector.acquire()
    elector.keep_leading(_stop_acting)
    return elector


def _stop_acting(why: str) -> None:
    """Leadership is lost: exit now, mid-handler if need be, before a standby can have taken over."""
    logging.getLogger(__name__).critical(f"leadership lost ({why}); exiting")
    logging.shutdown()
    os._exit(EXIT_LEADERSHIP_LOST)


if __name__ == "__main__":
    raise SystemExit(main())
