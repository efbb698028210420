"""Serve the dashboard on localhost; every request re-reads the tracking store, and the page
refreshes itself, so it follows studies while they run."""
from __future__ import annotations

import html
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bnnsearch.errors import UserError

from .page import build_html


def serve(uri: str | None, port: int, ui: str, refresh_s: int = 30, host: str = "127.0.0.1") -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path not in ("/", "/index.html", "/export.html"):
                self.send_error(404)
                return
            try:
                body, code = build_html(uri, ui, refresh_s=0 if self.path == "/export.html" else refresh_s), 200
            except UserError as e:  # the store went away or stopped answering after the start
                body, code = f"<!doctype html><title>bnnsearch dashboard</title><p>{html.escape(str(e))}</p>", 503
            body = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer((host, port), Handler)
    print(f"bnnsearch dashboard on http://{host}:{port}/ (refreshes every {refresh_s}s; "
          f"/export.html is the static export). Ctrl-C stops it.", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
