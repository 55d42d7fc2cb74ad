"""Shared HTTP plumbing for the vendor connectors: one place for timeouts, retries and pacing.

Every vendor module builds one `HttpClient`; vendor quirks (how success is signalled in the
body, pagination shapes) stay in the vendor's module.
"""

from __future__ import annotations

import email.utils
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog

from connectors.base import PermanentError, TransientError
from connectors.ratelimit import NoLimit, RateLimiter
from connectors.redact import redact, safe_url

if TYPE_CHECKING:  # imported when a client is made: ~7 MB a process without HTTP systems does not load (issue 15)
    import requests

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries, the first included
    backoff_base: float = 0.5  # seconds; doubles each try
    backoff_max: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After is a transient failure, not a hang


class NotFound(PermanentError):
    """404 from the vendor: callers usually treat it as 'nothing there'."""


class HttpClient:
    def __init__(
        self,
        system: str,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        auth: requests.auth.AuthBase | tuple[str, str] | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        sleep: Callable[[float], None] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.system = system
        self.base_url = base_url.rstrip("/")
        if session is None:
            import requests

            session = requests.Session()
        self.session = session
        self.session.headers.update({"Accept": "application/json", "User-Agent": "dsar/0.1"})
        if headers:
            self.session.headers.update(headers)
        if auth is not None:
            self.session.auth = auth
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.rate_limiter = rate_limiter or NoLimit()
        self._sleep = sleep  # None: time.sleep, looked up at call time so tests can patch it

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | list[tuple[str, Any]] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | list[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 202, 204),
    ) -> requests.Response:
        """Send with retries; return a response whose status is in `ok`, else raise a ConnectorError."""
        import requests

        url = self.url(path)
        where = f"{method} {safe_url(url)}"
        body = orjson.dumps(json) if json is not None else None
        send_headers = dict(headers or {})
        if body is not None:
            send_headers.setdefault("Content-Type", "application/json")
        last_problem, limited = "no attempt made", None
        for attempt in range(1, self.retry.attempts + 1):
            self.rate_limiter.acquire()
            try:
                resp = self.session.request(
                    method, url, params=params, data=body if body is not None else data,
                    headers=send_headers, timeout=self.timeout,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                last_problem, limited = f"{type(exc).__name__}", None
                self._backoff(attempt, None, where, last_problem)
                continue
            if resp.status_code in ok:
                return resp
            status = resp.status_code
            if status == 429 or status >= 500:
                last_problem = f"HTTP {status}{_vendor_message(resp)}"
                wait = _retry_after(resp) if status in (429, 503) else None
                limited = wait if status == 429 else None  # a rate limit's reset: the engine waits for it
                self._backoff(attempt, wait, where, last_problem)
                continue
            message = f"{where} answered HTTP {status}{_vendor_message(resp)}"
            if status == 404:
                raise NotFound(self.system, message)
            if status in (401, 403):
                raise PermanentError(self.system, f"{message} (check the credentials and their permissions)")
            raise PermanentError(self.system, message)
        raise TransientError(self.system, f"{where} failed after {self.retry.attempts} attempts: {last_problem}",
                             retry_after=limited)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(
                self.system, f"{method} {safe_url(self.url(path))} returned a body that is not JSON"
            ) from exc

    def _backoff(self, attempt: int, retry_after: float | None, where: str, problem: str) -> None:
        if attempt >= self.retry.attempts:
            return
        if retry_after is not None:
            if retry_after > self.retry.max_retry_after:
                raise TransientError(
                    self.system, f"{where}: vendor asks to wait {retry_after:.0f}s ({problem}); retry later",
                    retry_after=retry_after,
                )
            delay = retry_after
        else:
            cap = min(self.retry.backoff_max, self.retry.backoff_base * 2 ** (attempt - 1))
            delay = random.uniform(cap / 2, cap)  # jitter keeps many workers from retrying in step
        log.info("http.retry", system=self.system, call=where, problem=problem, attempt=attempt, delay=round(delay, 3))
        (self._sleep or time.sleep)(delay)

    def close(self) -> None:
        self.session.close()


def _retry_after(resp: requests.Response) -> float | None:
    """Seconds to wait from Retry-After (seconds or HTTP date) or X-RateLimit-Reset (epoch or delta)."""
    value = resp.headers.get("Retry-After")
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None
    reset = resp.headers.get("X-RateLimit-Reset")
    if reset and reset.strip().isdigit():
        number = float(reset)
        # Large values are epoch seconds; small ones are a delta.
        return max(0.0, number - time.time()) if number > 1_000_000_000 else number
    return None


def _vendor_message(resp: requests.Response) -> str:
    """The vendor's error text, if any, shortened and scrubbed of personal data."""
    try:
        payload = orjson.loads(resp.content) if resp.content else None
    except orjson.JSONDecodeError:
        return ""
    message = None
    if isinstance(payload, dict):
        errors = payload.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            message = errors[0].get("message")
        message = message or payload.get("message") or payload.get("error")
        if isinstance(payload.get("status"), str) and message:
            message = f"{payload['status']}: {message}"
    if not message:
        return ""
    return f" ({redact(str(message))[:200]})"


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


def in_parallel(jobs: Sequence[Callable[[], Iterable[T]]], max_workers: int = 4, buffer: int = 500) -> Iterator[T]:
    """Run independent calls (each may walk its own pages) at once; yield their items in job order.

    Vendor latency adds up when calls run one after another; this overlaps them. Each job streams
    into its own bounded queue, so memory stays bounded however long a job's output is (a job
    waits while its queue is full). Jobs start in order, so the one being read is always running
    or done. A job's exception is raised when its turn to be read comes; closing the iterator
    early stops the jobs. The Session's connection pool is thread-safe.
    """
    if len(jobs) <= 1 or max_workers <= 1:
        for job in jobs:
            yield from job()
        return
    queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=buffer) for _ in jobs]
    stop = threading.Event()

    def put(q: queue.Queue[Any], item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(q: queue.Queue[Any], job: Callable[[], Iterable[T]]) -> None:
        try:
            for item in job():
                if not put(q, item):
                    return
        except BaseException as exc:
            put(q, _Failed(exc))
            return
        put(q, _END)

    with ThreadPoolExecutor(max_workers=min(max_workers, len(jobs)), thread_name_prefix="http") as pool:
        for q, job in zip(queues, jobs, strict=True):
            pool.submit(run, q, job)
        try:
            for q in queues:
                while (item := q.get()) is not _END:
                    if isinstance(item, _Failed):
                        raise item.exc
                    yield item
        finally:
            stop.set()


def paginate(fetch_page: Callable[[int], tuple[list[Any], bool]], *, first_page: int = 1,
             max_pages: int = 10_000) -> Iterator[Any]:
    """Yield items page by page; `fetch_page(n)` returns (items, more_pages_follow)."""
    page = first_page
    for _ in range(max_pages):
        items, more = fetch_page(page)
        yield from items
        if not more or not items:
            return
        page += 1
    raise PermanentError("pagination", f"stopped after {max_pages} pages; the vendor never signalled the end")
