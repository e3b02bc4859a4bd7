"""The dashboard's web app (Starlette): pages, the JSON API, ``/metrics`` and ``/healthz``.

Every handler reads the snapshot through :class:`.snapshots.SnapshotSource`. Bad parameters are
an HTTP 400 with a one-line reason; a missing or unreadable snapshot is a 503 (a page that says
so, or one line for the API and probes); nothing ever answers with a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionpipe_runner.processors import registry
from sessionpipe_runner.processors.usage.report import local_timezone, materialize_calls, usage_by_user_and_model
from sessionpipe_runner.reports import NoData, ReportError, report_json
from sessionpipe_runner.serve import pages
from sessionpipe_runner.serve.cache import Answer, AnswerCache
from sessionpipe_runner.serve.charts import money, short_number
from sessionpipe_runner.serve.metrics import exposition
from sessionpipe_runner.serve.params import QueryError, ReportQuery, parse_filters, report_query
from sessionpipe_runner.serve.snapshots import OpenSnapshot, SnapshotSource, SnapshotUnavailable
from sessionpipe_runner.store.queries import status_data

HERE = Path(__file__).resolve().parent
JSON = "application/json"
HTML = "text/html; charset=utf-8"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
#: Every response forbids scripts and anything not served by the dashboard itself: the pages need
#: none, and should an unescaped name ever slip through, the browser still would not run it.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'none'; object-src 'none'; img-src 'self' data:; "
        b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Dashboard:
    """The app's state: the snapshot, the reports' query parsers, the templates, the default zone."""

    def __init__(self, database: Path, default_tz: str | None = None) -> None:
        self.source = SnapshotSource(database, prepare=materialize_calls)
        self.default_tz = default_tz or local_timezone()
        self.usage = report_query(_report("usage"))
        self.verification = report_query(_report("verification"))
        # Autoescape everything: project folders, session names and quotes come from transcripts.
        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
        )
        environment.globals.update(money=money, short_number=short_number)
        self.environment = environment
        self.templates = Jinja2Templates(env=environment)
        self.answers = AnswerCache()

    # -- probes, metrics, API -------------------------------------------------------------

    def healthz(self, request: Request) -> Response:
        self.source.check()
        return PlainTextResponse("ok\n")

    def metrics(self, request: Request) -> Response:
        def compute(snapshot: OpenSnapshot) -> Answer:
            rows = usage_by_user_and_model(snapshot.con) if snapshot.has("usage_messages") else []
            return Answer(exposition(rows, published=snapshot.published), PROMETHEUS_TEXT)

        return self._answer(request, compute)

    def api_usage(self, request: Request) -> Response:
        return self._report_json(self.usage, request)

    def api_verification(self, request: Request) -> Response:
        return self._report_json(self.verification, request)

    def api_runs(self, request: Request) -> Response:
        refuse_parameters(request)
        return self._answer(request, lambda snapshot: _json(status_data(snapshot.con)))

    def _report_json(self, query: ReportQuery, request: Request) -> Response:
        args = query.parse(request.query_params.multi_items())
        return self._answer(request, lambda snapshot: _json(query.report.data(snapshot.con, args)))

    def _answer(self, request: Request, compute: Callable[[OpenSnapshot], Answer]) -> Response:
        """``compute``'s answer from the current snapshot, or the one kept for this request (see :mod:`.cache`)."""
        with self.source.connection() as snapshot:
            minute = int(time.time() // 60)
            key = (snapshot.identity, request.url.path, tuple(request.query_params.multi_items()), minute)
            answer = self.answers.get(key)
            if answer is None:
                answer = compute(snapshot)
                self.answers.put(key, answer)
        return Response(answer.body, status_code=answer.status, media_type=answer.media_type)

    # -- pages ----------------------------------------------------------------------------

    def page(self, build: Callable[..., dict[str, Any]], template: str, extra: dict[str, tuple[str, ...]]) -> Any:
        """An endpoint rendering ``template`` with what ``build(con, filters)`` returns."""

        def endpoint(request: Request) -> Response:
            filters = parse_filters(request.query_params.multi_items(), self.default_tz, extra)

            def render(snapshot: OpenSnapshot) -> Answer:
                context = build(snapshot, filters)
                context.update(request=request, filters=filters, page=template.removesuffix(".html"))
                return Answer(self.environment.get_template(template).render(context).encode(), HTML)

            return self._answer(request, render)

        return endpoint

    def error(self, request: Request, status: int, reason: str) -> Response:
        """The one-line ``reason`` as text (API, probes, metrics) or as a page, with ``status``."""
        if not _wants_page(request):
            return PlainTextResponse(reason + "\n", status_code=status)
        context = {"request": request, "status": status, "reason": reason, "page": "error", "filters": None}
        return self.templates.TemplateResponse(request, "error.html", context, status_code=status)


def _json(data: dict[str, Any]) -> Answer:
    return Answer(report_json(data).encode(), JSON)


def refuse_parameters(request: Request) -> None:
    """QueryError for any query parameter: the endpoint takes none."""
    for name, _ in request.query_params.multi_items():
        raise QueryError(f"unknown parameter {name!r} (this endpoint takes none)")


def _report(name: str) -> Any:
    report = registry.load(name).report()
    if report is None:
        raise RuntimeError(f"processor {name} has no report")
    return report


def _wants_page(request: Request) -> bool:
    return not request.url.path.startswith(("/api/", "/metrics", "/healthz"))


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def create_app(database: Path, default_tz: str | None = None) -> Starlette:
    """The dashboard of ``database``'s newest snapshot; days are cut in ``default_tz`` unless a
    request names another (default: this machine's zone, as the CLI)."""
    dashboard = Dashboard(database, default_tz)

    async def bad_request(request: Request, error: Exception) -> Response:
        return dashboard.error(request, 400, _one_line(error))

    async def no_data(request: Request, error: Exception) -> Response:
        return dashboard.error(request, 404, _one_line(error))

    async def unavailable(request: Request, error: Exception) -> Response:
        return dashboard.error(request, 503, _one_line(error))

    async def unreadable(request: Request, error: Exception) -> Response:
        reason = f"the snapshot {dashboard.source.path} cannot be read: {_one_line(error)}"
        return dashboard.error(request, 503, reason)

    routes = [
        Route("/healthz", dashboard.healthz),
        Route("/metrics", dashboard.metrics),
        Route("/api/usage", dashboard.api_usage),
        Route("/api/verification", dashboard.api_verification),
        Route("/api/runs", dashboard.api_runs),
        *[Route(path, dashboard.page(build, template, extra)) for path, build, template, extra in pages.PAGES],
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={
            QueryError: bad_request,
            NoData: no_data,
            ReportError: bad_request,
            SnapshotUnavailable: unavailable,
            duckdb.Error: unreadable,
        },
    )
    app.state.dashboard = dashboard
    return app
