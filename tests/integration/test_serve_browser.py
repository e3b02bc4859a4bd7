"""Every dashboard page in a real headless Chromium: no console errors, charts drawn, the hostile
project folder shown as text and never run; a screenshot of each page.

Screenshots go to ``$SESSIONPIPE_SCREENSHOT_DIR`` when it is set, else under the test's tmp_path;
the test prints where.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import browser
from tests.serve_support import XSS_FOLDER, XSS_QUOTE, XSS_USER, build_dashboard_db, serving

PAGES = {
    "overview-day": "/",
    "overview-week": "/?by=week",
    "overview-month": "/?by=month",
    "users": "/users",
    "projects": "/projects",
    "sessions": "/sessions",
    "drill-down": f"/sessions?user={XSS_USER}",
    "blocks": "/blocks",
    "verification": "/verification",
    "verification-mallory": f"/verification?user={XSS_USER}&kind=unprompted_definition",
    "runs": "/runs",
}
FACTS = """({
    charts: document.querySelectorAll('svg.chart').length,
    bars: document.querySelectorAll('svg.chart rect.bar').length,
    images: document.querySelectorAll('img').length,
    scripts: document.scripts.length,
    styled: getComputedStyle(document.querySelector('header')).backgroundColor,
    text: document.body.innerText,
    hostileTitles: Array.from(document.querySelectorAll('svg title, svg text')).map(e => e.textContent)
        .filter(t => t.includes('<img')).length,
})"""


def screenshot_dir(tmp_path: Path) -> Path:
    chosen = os.environ.get("SESSIONPIPE_SCREENSHOT_DIR")
    folder = Path(chosen) if chosen else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_every_page_in_headless_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = build_dashboard_db(tmp_path / "data")
    shots = screenshot_dir(tmp_path)
    with serving(db) as base, browser(tmp_path / "chromium") as chromium:
        visits = {name: chromium.visit(base + path, FACTS, shots / f"{name}.png") for name, path in PAGES.items()}
    with capsys.disabled():
        print(f"\nscreenshots of the dashboard: {shots}")
    for name, visit in visits.items():
        assert visit.errors == [], (name, visit.errors)
        assert visit.dialogs == [], (name, visit.dialogs)
        assert visit.facts["charts"] >= 1 and visit.facts["bars"] >= 1, (name, visit.facts)
        assert visit.facts["images"] == 0 and visit.facts["scripts"] == 0, (name, visit.facts)
        assert visit.facts["styled"] == "rgb(27, 31, 36)", "the stylesheet served by the package was applied"
        assert (shots / f"{name}.png").stat().st_size > 5000, name
    assert XSS_FOLDER in visits["projects"].facts["text"]
    assert visits["projects"].facts["hostileTitles"] >= 1  # in the chart too, as text
    assert XSS_FOLDER in visits["drill-down"].facts["text"]
    assert XSS_QUOTE[:60].strip() in visits["verification-mallory"].facts["text"]  # the replay quotes 60 characters
