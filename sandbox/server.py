"""Serve a simulator WSGI app on 127.0.0.1 in a background thread.

Optional middleware models what the benchmark needs from a real vendor: a fixed latency per
call, and a request-rate limit that answers 429 with Retry-After when exceeded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Stats:
    calls: int = 0
    throttled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Throttle:
    """Latency and a sliding one-second rate limit in front of an app; counts 429s it sends."""

    def __init__(self, app: WSGIApp, latency_s: float = 0.0, rate_per_second: int | None = None) -> None:
        self.app = app
        self.latency_s = latency_s
        self.rate = rate_per_second
        self.stats = Stats()
        self._window: deque[float] = deque()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self.stats.lock:
            self.stats.calls += 1
            if self.rate:
                now = time.monotonic()
                while self._window and now - self._window[0] >= 1.0:
                    self._window.popleft()
                if len(self._window) >= self.rate:
                    self.stats.throttled += 1
                    headers = [("Content-Type", "application/json"), ("Retry-After", "1")]
                    start_response("429 Too Many Requests", headers)
                    return [b'{"code":429,"status":"TOO_MANY_REQUESTS","message":"rate limit exceeded"}']
                self._window.append(now)
        if self.latency_s:
            time.sleep(self.latency_s)
        return self.app(environ, start_response)


class _QuietHandler(WSGIRequestHandler):
    """No access log: request lines carry e-mails in query strings."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class Served:
    """A running server; `url` is its base, `stop()` shuts it down."""

    def __init__(self, app: WSGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"sandbox:{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
