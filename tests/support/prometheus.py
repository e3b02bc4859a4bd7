"""A real Prometheus (Debian's ``prometheus`` package, ``make prometheus``) on loopback, for tests.

:class:`Prometheus` writes a scrape configuration for the given targets, starts the server on a free
port of 127.0.0.1 with its storage in a test folder, and answers PromQL through the HTTP API
(``/api/v1/query``, ``/api/v1/query_range``, ``/api/v1/label/…/values``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sessionpipe_kubetest.cluster import free_port
from sessionpipe_kubetest.waiting import wait_for

#: How often every target is scraped (and rules evaluated): short, so a test sees new values at once.
SCRAPE_SECONDS = 1


@dataclass(frozen=True)
class Target:
    """One scrape job: ``/metrics`` of 127.0.0.1:``port``; ``honor_labels`` keeps the target's own labels."""

    port: int
    honor_labels: bool = False


class Prometheus:
    """A Prometheus process scraping ``targets`` (job name -> target); use :meth:`running`."""

    def __init__(self, workdir: Path, targets: Mapping[str, Target]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.targets = dict(targets)
        self.log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> dict[str, Any]:
        interval = f"{SCRAPE_SECONDS}s"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [
                {
                    "job_name": job,
                    "honor_labels": target.honor_labels,
                    "static_configs": [{"targets": [f"127.0.0.1:{target.port}"]}],
                }
                for job, target in self.targets.items()
            ],
        }

    @contextmanager
    def running(self) -> Iterator[Prometheus]:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: run `make prometheus` (Debian's package)"
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config()))
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    "setpriv",
                    "--pdeathsig",
                    "KILL",
                    "--",
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(lambda: self._ready(process), 60, f"Prometheus to be ready (log {self.log_path})", interval=0.3)
            yield self
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _ready(self, process: subprocess.Popen[bytes]) -> bool:
        if process.poll() is not None:
            raise AssertionError(f"Prometheus exited early:\n{self.log_path.read_text(errors='replace')[-3000:]}")
        try:
            self._get("/api/v1/status/buildinfo")  # the API answers once the server is ready
        except (OSError, AssertionError):
            return False
        return True

    def _get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{path} {params}: HTTP {error.code}: {error.read().decode()}") from error
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query now: ``{"resultType": …, "result": […]}``."""
        return dict(self._get("/api/v1/query", query=expr))

    def query_range(self, expr: str, seconds: float) -> dict[str, Any]:
        """A range query over the last ``seconds``, one step per scrape."""
        end = time.time()
        return dict(
            self._get(
                "/api/v1/query_range",
                query=expr,
                start=f"{end - seconds:.3f}",
                end=f"{end:.3f}",
                step=f"{SCRAPE_SECONDS}s",
            )
        )

    def label_values(self, label: str, match: str) -> list[str]:
        """The values ``label`` takes on the series ``match`` selects."""
        return list(self._get(f"/api/v1/label/{label}/values", **{"match[]": match}))

    def targets_up(self) -> dict[str, bool]:
        """Each scrape job: whether its last scrape succeeded."""
        active = self._get("/api/v1/targets")["activeTargets"]
        return {target["labels"]["job"]: target["health"] == "up" for target in active}
