"""The dashboard's web app (aiohttp): one static page, a JSON API over the data sources, downloads.

The page polls the API (every few seconds; an unchanged experiment answers in a few bytes), so a
running search moves on screen without websockets or a front-end build. plotly.js is served from
the installed plotly package: nothing is fetched from a CDN, so it works offline and behind firewalls.

Reads that block (files, the Kubernetes API, Ax's model fits) run in threads. Model diagnostics are
costly (a GP fit per metric), so they run one at a time and only when the user asks, and are cached
per experiment until its number of results changes.

The server answers only requests addressed to it by the name it listens on (the Host header), so a
web page elsewhere cannot reach it through DNS rebinding and read the user's experiments.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from nas_operator.dashboard.model import Loaded, detail, summary, with_age
from nas_operator.dashboard.sources import Source

REFRESH_SECONDS = 3.0
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _package_file(*parts: str) -> bytes:
    return resources.files("nas_operator.dashboard").joinpath(*parts).read_bytes()


def _plotly_js() -> bytes:
    return resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()


class Documents:
    """The list row and the page of each experiment, built once per version of it (1,000 trials take ~1 s)."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[str, dict[str, Any]]] = {}
        self._pages: dict[str, tuple[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def row(self, item: Loaded) -> dict[str, Any]:
        with self._lock:
            cached = self._rows.get(item.key)
        if cached is None or cached[0] != item.version:
            cached = (item.version, summary(item))
            with self._lock:
                self._rows[item.key] = cached
        return with_age(cached[1], item)

    def page(self, item: Loaded) -> dict[str, Any]:
        with self._lock:
            cached = self._pages.get(item.key)
        if cached is None or cached[0] != item.version:
            cached = (item.version, detail(item, self.row(item)))
            with self._lock:
                self._pages[item.key] = cached
        return {**cached[1], "summary": self.row(item)}


def warm_up() -> None:
    """Import what the hypervolume needs (torch, BoTorch: seconds) before the first page asks for it."""
    import botorch.utils.multi_objective.box_decompositions.dominated  # noqa: F401


class Diagnostics:
    """Ax's model diagnostics per experiment, computed once per number of results, one computation at a time."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def get(self, item: Loaded) -> list[dict[str, Any]]:
        from nas_operator.core.loop import trial_outcomes
        from nas_operator.search.analysis import model_diagnostics

        assert item.spec is not None and item.state is not None and item.engine is not None
        results = item.state.count("succeeded")
        with self._lock:
            cached = self._cache.get(item.key)
            if cached is not None and cached[0] == results:
                return cached[1]
            cards = [d.to_json() for d in model_diagnostics(item.spec, item.engine, trial_outcomes(item.state))]
            self._cache[item.key] = (results, cards)
            return cards


def create_app(sources: list[Source], allowed_hosts: set[str] | None = None) -> web.Application:
    """The app over the given sources; `allowed_hosts` are the Host headers it answers (None: any, for tests)."""
    diagnostics = Diagnostics()
    documents = Documents()

    @web.middleware
    async def only_our_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if allowed_hosts is not None and request.host not in allowed_hosts:
            raise web.HTTPMisdirectedRequest(text=f"this dashboard answers {', '.join(sorted(allowed_hosts))} only")
        return await handler(request)

    def source_of(key: str) -> Source:
        for source in sources:
            if key.startswith(source.prefix):
                return source
        raise web.HTTPNotFound(text=f"no experiment {key}")

    async def load(request: web.Request) -> Loaded:
        key = request.match_info["key"]
        item = await asyncio.to_thread(source_of(key).load, key)
        if item is None:
            raise web.HTTPNotFound(text=f"no experiment {key}")
        return item

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=_package_file("templates", "index.html"), content_type="text/html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "plotly.min.js":
            body = await asyncio.to_thread(_plotly_js)
            return web.Response(body=body, content_type="text/javascript", headers={"Cache-Control": "max-age=86400"})
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_package_file("static", name), content_type=STATIC[name])

    async def experiments(request: web.Request) -> web.Response:
        def listing() -> dict[str, Any]:
            rows: list[dict[str, Any]] = []
            errors: list[str] = []
            for source in sources:
                try:
                    for key in source.experiment_keys():
                        item = source.load(key)
                        if item is not None:
                            rows.append(documents.row(item))
                    errors += source.errors
                except Exception as exc:  # one unreachable cluster must not hide the local results
                    errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            return {"experiments": rows, "errors": errors, "refreshSeconds": REFRESH_SECONDS}

        return web.json_response(await asyncio.to_thread(listing))

    async def experiment(request: web.Request) -> web.Response:
        item = await load(request)
        if request.query.get("version") == item.version:
            return web.json_response({"unchanged": True, "version": item.version})
        return web.json_response(await asyncio.to_thread(documents.page, item))

    async def curves(request: web.Request) -> web.Response:
        item = await load(request)
        index = _trial_index(request)
        if item.state is None or index not in item.state.trials:
            raise web.HTTPNotFound(text=f"no trial {index}")
        trial = item.state.trials[index]
        read = await asyncio.to_thread(source_of(item.key).curves, item.key, trial.name)
        if read is None:
            return web.json_response(
                {"readable": False, "reason": "the trial's logs are on the cluster's volume, not readable from here"}
            )
        return web.json_response({"readable": True, "trial": trial.name, "curves": read})

    async def model_diagnostics(request: web.Request) -> web.Response:
        item = await load(request)
        if item.spec is None or item.state is None or not item.engine:
            return web.json_response({"cards": [], "reason": item.problem or "no engine state to analyse"})
        cards = await asyncio.to_thread(diagnostics.get, item)
        return web.json_response({"cards": cards, "results": item.state.count("succeeded")})

    async def download(request: web.Request) -> web.Response:
        from nas_operator.local.results import write_pareto_json, write_trials_csv

        item = await load(request)
        if item.spec is None or item.state is None:
            raise web.HTTPNotFound(text=item.problem or "no state")
        what = request.match_info["file"]
        spec, state = item.spec, item.state

        def written() -> bytes:
            # The very files `nasctl run` writes (same columns, same document), made in a scratch directory.
            with tempfile.TemporaryDirectory(prefix="nas-dashboard-") as tmp:
                if what == "trials.csv":
                    return write_trials_csv(spec, state, Path(tmp)).read_bytes()
                return write_pareto_json(spec, state, Path(tmp) / "pareto.json").read_bytes()

        body = await asyncio.to_thread(written)
        content_type = "text/csv" if what == "trials.csv" else "application/json"
        filename = f"{item.name}-{'trials.csv' if what == 'trials.csv' else 'pareto.json'}"
        return web.Response(
            body=body, content_type=content_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
        )

    app = web.Application(middlewares=[only_our_host])
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/experiments", experiments)
    app.router.add_get("/api/experiments/{key}", experiment)
    app.router.add_get("/api/experiments/{key}/trials/{index}/curves", curves)
    app.router.add_get("/api/experiments/{key}/diagnostics", model_diagnostics)
    app.router.add_get("/api/experiments/{key}/{file:trials\\.csv|pareto\\.json}", download)
    return app


def _trial_index(request: web.Request) -> int:
    try:
        return int(request.match_info["index"])
    except ValueError:
        raise web.HTTPBadRequest(text="index: expected a trial number") from None


def allowed_hosts(host: str, port: int) -> set[str]:
    """The Host headers a browser sends for this address (and localhost, for a dashboard on loopback)."""
    names = {host, f"[{host}]"} if ":" in host else {host}
    if host in ("127.0.0.1", "::1", "localhost"):
        names |= {"localhost", "127.0.0.1", "[::1]"}
    return {f"{name}:{port}" for name in names}


def serve(sources: list[Source], host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Run until interrupted; `on_ready` gets the page's address once the socket listens."""

    async def main() -> None:
        hosts: set[str] = set()  # filled once the port is known (port 0: the system chooses one)
        warming = asyncio.create_task(asyncio.to_thread(warm_up))
        runner = web.AppRunner(create_app(sources, hosts), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = int(runner.addresses[0][1])
        hosts.update(allowed_hosts(host, bound))
        shown = f"[{host}]" if ":" in host else host
        on_ready(f"http://{shown}:{bound}/")
        try:
            await warming
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
