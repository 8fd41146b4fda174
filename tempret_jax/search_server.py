"""A local search page for a run: a text box, and the run's test clips ranked for the query.

    python -m tempret_jax.search_server --workdir runs/demo [--port 8000] [--host 127.0.0.1]

Then open http://127.0.0.1:8000/. The run's `search.Searcher` (model, checkpoint, clip index)
is opened once at start; every request is one `Searcher.search`.

    GET /                     the page: a text box
    GET /?q=cut+onion&top=10  the page with the ranked clips (rank, score, narration, frames)
    GET /api/search?q=...&top=10
                              JSON {"query", "top", "hits": [{"rank", "score", "narration_id",
                              "narration", "clip_row"}]}

An empty query or a ``top`` outside 1..MAX_TOP is answered 400 with the reason. The server is
the standard library's ThreadingHTTPServer bound to the loopback interface unless ``--host``
says otherwise: it is a local viewer, with no authentication.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import http
import http.server
import json
import sys
import threading
import urllib.parse

import numpy as np

from tempret_jax import checkpoint, gallery, search
from tempret_jax import config as config_lib
from tempret_jax.data import pipeline

TITLE = "tempret-jax search"
MAX_TOP = 50
DEFAULT_TOP = 10


class BadRequest(ValueError):
    """A request the page cannot answer (answered 400 with this message)."""


class SearchPage:
    """The page and the JSON answer of one opened run (thread-safe: one search at a time)."""

    def __init__(self, searcher: search.Searcher):
        self.searcher = searcher
        meta = searcher.index.meta
        self.frames = pipeline.clip_frames(searcher.config.dataset_dir, meta["split"])
        self.about = (f"{meta['config']}, step {meta['step']}, {meta['split']} split "
                      f"({len(searcher.index.clip_rows)} clips)")
        self._lock = threading.Lock()  # the searcher's model and data source are shared

    def hits(self, params: dict[str, list[str]]) -> tuple[str, int, list[search.Hit]]:
        """(query, top, hits) of a request's parameters ``q`` and ``top``; BadRequest if
        they are invalid."""
        query = params.get("q", [""])[0].strip()
        if not query:
            raise BadRequest("the query (q) is empty: type what to search for")
        top = params.get("top", [str(DEFAULT_TOP)])[0]
        if not top.isdigit() or not 1 <= int(top) <= MAX_TOP:
            raise BadRequest(f"top must be a whole number from 1 to {MAX_TOP}, got {top!r}")
        with self._lock:
            return query, int(top), self.searcher.search(query, int(top))

    def answer(self, params) -> dict:
        """The JSON answer (module docstring)."""
        query, top, hits = self.hits(params)
        return {"query": query, "top": top, "hits": [dataclasses.asdict(h) for h in hits]}

    def body(self, params) -> str:
        """The page's body; with a query (``q`` given), its ranked clips below the box."""
        results = ""
        if "q" in params:
            query, _, hits = self.hits(params)
            with self._lock:
                items = "".join(gallery.result_item(h.rank, h.score, self._clip(h)) for h in hits)
            results = (f'<h2>Top {len(hits)} clips for &ldquo;{html.escape(query)}&rdquo;</h2>'
                       f'<ol class="results" id="results">{items}</ol>')
        return self.form(params.get("q", [""])[0]) + results

    def _clip(self, hit: search.Hit) -> str:
        # Prepared records are in CSV order without the skipped clips: sorted rows are records.
        record = int(np.searchsorted(self.searcher.index.clip_rows, hit.clip_row))
        return (gallery.strip_image(self.frames(record), hit.narration_id)
                + f"{html.escape(hit.narration_id)}: {html.escape(hit.narration)}")

    def error_page(self, reason: str) -> str:
        return gallery.page(TITLE, f'{self.form()}<p class="error">{html.escape(reason)}</p>')

    def form(self, query: str = "") -> str:
        return (f"<h1>Search the clips</h1><p>{html.escape(self.about)}</p>"
                f'<form method="get" action="/"><input type="search" name="q" id="q" size="50" '
                f'required autofocus value="{html.escape(query)}" placeholder="cut the onion"> '
                f'<button type="submit">Search</button></form>')


def handler(search_page: SearchPage) -> type[http.server.BaseHTTPRequestHandler]:
    """The request handler class serving ``search_page``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's name)
            url = urllib.parse.urlsplit(self.path)
            params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            if url.path == "/favicon.ico":  # browsers ask; none, without a console error
                self._send(http.HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            elif url.path == "/api/search":
                self._answer(lambda: json.dumps(search_page.answer(params)), "application/json",
                             lambda reason: json.dumps({"error": reason}))
            elif url.path == "/":
                self._answer(lambda: gallery.page(TITLE, search_page.body(params)),
                             "text/html; charset=utf-8", search_page.error_page)
            else:
                self._send(http.HTTPStatus.NOT_FOUND, b"not found", "text/plain")

        def _answer(self, body, content_type: str, error_body):
            try:
                status, text = http.HTTPStatus.OK, body()
            except BadRequest as e:
                status, text = http.HTTPStatus.BAD_REQUEST, error_body(str(e))
            self._send(status, text.encode(), content_type)

        def _send(self, status, data: bytes, content_type: str):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # noqa: A002  one line per request, on stderr
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return Handler


def serve(searcher: search.Searcher, host: str = "127.0.0.1", port: int = 0
          ) -> http.server.ThreadingHTTPServer:
    """A server (not yet serving: call ``serve_forever``) of the page for ``searcher``; port 0
    takes a free one (``server.server_address[1]``)."""
    return http.server.ThreadingHTTPServer((host, port), handler(SearchPage(searcher)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained (or evaluated) run")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (the latest)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    try:
        searcher = search.Searcher.open(args.workdir, step=args.step)
        server = serve(searcher, args.host, args.port)
    except (config_lib.ConfigError, checkpoint.CheckpointError, search.SearchError,
            OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    host, port = server.server_address[:2]
    print(f"serving {searcher.index.meta['config']} on http://{host}:{port}/ (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
