"""The session that calls back (discovery/engine/callbacks.py says why): resolves, checks and connects in one step.

Its own module so that requests and urllib3 are imported only when a callback is sent (`callbacks.session`)."""

from __future__ import annotations

import socket
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from discovery.engine.callbacks import CallbackPolicy


def _pinned(base: type[HTTPConnection], policy: CallbackPolicy) -> type[HTTPConnection]:
    """A connection class that resolves, checks and connects in one step (the address is never looked up twice)."""

    def _new_conn(self: HTTPConnection) -> socket.socket:
        scheme = "https" if isinstance(self, HTTPSConnection) else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        last: OSError | None = None
        for address in policy.addresses(f"{scheme}://{host}:{self.port}/"):
            try:
                return urllib3_connection.create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options)
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from exc
            except OSError as exc:
                last = exc
        raise NewConnectionError(self, f"Failed to establish a new connection: {last}")

    return type(f"Pinned{base.__name__}", (base,), {"_new_conn": _new_conn})


class _PinnedAdapter(HTTPAdapter):
    def __init__(self, policy: CallbackPolicy) -> None:
        self.policy = policy
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PinnedHTTPPool", (HTTPConnectionPool,),
                         {"ConnectionCls": _pinned(HTTPConnection, self.policy)}),
            "https": type("PinnedHTTPSPool", (HTTPSConnectionPool,),
                          {"ConnectionCls": _pinned(HTTPSConnection, self.policy)}),
        }


class _NoRedirects(requests.Session):
    """A 3xx is an answer, not an instruction: the callback's receiver gets no second URL to aim us at."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["allow_redirects"] = False
        return super().request(method, url, *args, **kwargs)


def pinned_session(policy: CallbackPolicy) -> requests.Session:
    """A requests session for callbacks: no redirects, no proxies from the environment, pinned checked addresses."""
    s = _NoRedirects()
    s.trust_env = False
    adapter = _PinnedAdapter(policy)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s
