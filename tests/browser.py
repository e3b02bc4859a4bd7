"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

Chosen over ``--dump-dom``/``--screenshot`` runs because only the protocol reports what the page
did: console errors, uncaught exceptions, failed loads and blocked content (``Log.entryAdded``),
a JavaScript dialog that an injected handler would open, and the DOM after the load, from one
browser process for every page. The websocket client is ``websocket-client`` (a dependency of the
kubernetes client already installed).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

#: The Debian package's binary; ``make browser`` installs it.
BINARY_NAMES = ("chromium", "chromium-browser")


def chromium_binary() -> str:
    for name in BINARY_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("chromium is not installed: run 'make browser' (apt-get install chromium)")


@dataclass
class PageVisit:
    """What loading one page showed: problems the browser reported, dialogs, and DOM facts."""

    url: str
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


class Browser:
    """One Chromium process and one tab, attached with a flat DevTools session."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = workdir / "chromium.stderr"
        command = [
            chromium_binary(),
            "--headless",
            "--remote-debugging-port=0",
            f"--user-data-dir={workdir / 'profile'}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--window-size=1280,1000",
            "about:blank",
        ]
        if os.geteuid() == 0:
            command.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        self.ws = websocket.create_connection(self._endpoint(), timeout=60, suppress_origin=True)
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=self.session)

    def _endpoint(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"DevTools listening on (ws://\S+)", self.stderr_path.read_text(errors="replace"))
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"chromium did not start: {self.stderr_path.read_text(errors='replace')[-2000:]}")

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one command and wait for its answer; events met meanwhile are kept in :attr:`events`."""
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            answer = json.loads(self.ws.recv())
            if answer.get("id") == number:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            self.events.append(answer)

    def _wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {method} within {timeout} s")
            self.ws.settimeout(max(deadline - time.monotonic(), 0.1))
            self.events.append(json.loads(self.ws.recv()))
        self.ws.settimeout(60)

    def visit(self, url: str, expression: str, screenshot: Path | None = None) -> PageVisit:
        """Load ``url``, evaluate ``expression`` (a JSON-able value) on it, take a screenshot."""
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=self.session)
        self._wait_for("Page.loadEventFired")
        visit = PageVisit(url)
        facts = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=self.session)
        visit.facts = facts["result"].get("value", {})
        if screenshot is not None:
            shot = self.call(
                "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=self.session
            )
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        self.call("Runtime.evaluate", {"expression": "1"}, session=self.session)  # flush late events
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                visit.errors.append("console: " + " ".join(str(a.get("value", a)) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                visit.errors.append("exception: " + str(params.get("exceptionDetails", {}).get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                visit.errors.append("log: " + str(params["entry"].get("text")))
            elif method == "Page.javascriptDialogOpening":
                visit.dialogs.append(str(params.get("message")))
                self.call("Page.handleJavaScriptDialog", {"accept": True}, session=self.session)
        return visit

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def browser(workdir: Path) -> Iterator[Browser]:
    opened = Browser(workdir)
    try:
        yield opened
    finally:
        opened.close()
