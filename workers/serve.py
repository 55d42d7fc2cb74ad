"""What `dsar serve` becomes (exec, same pid) once it has checked the settings and upgraded the ledger:
`python -m workers.serve --host H --port P --workers N` runs uvicorn on `workers.api:create_app`.

A fresh interpreter, so the API server that runs for days holds the app and what its routes import, not the whole
CLI (every command module, click's groups) that `dsar` loads to parse its command line; and it refuses rich before
structlog is imported (workers/logs.refuse_rich). Issue 15: the long-running processes' memory.
"""

from __future__ import annotations

import argparse
import sys

from workers.logs import refuse_rich


def serve_argv(host: str, port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "workers.serve", "--host", host, "--port", str(port), "--workers", str(workers)]


def main(argv: list[str]) -> int:
    refuse_rich()  # before anything imports structlog
    parser = argparse.ArgumentParser(prog="python -m workers.serve", description="Run by `dsar serve`.")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    import asyncio
    import contextlib
    import signal
    import socket
    from types import FrameType
    from typing import Any

    import uvicorn
    from uvicorn.main import STARTUP_FAILURE

    class QuietServer(uvicorn.Server):
        """uvicorn's server, waking once a second (its Date header) instead of ten times (uvicorn's main loop
        looks for a stop every 0.1 s), and at once on a stop signal: an idle API costs next to nothing."""

        _loop: asyncio.AbstractEventLoop | None = None
        _stop: asyncio.Event | None = None

        async def main_loop(self) -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            # A stop signal the kernel gives another thread must still wake the loop: through the wake-up fd
            # (the Python handler then runs in this thread as soon as it does).
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
            self._loop.add_reader(reader.fileno(), lambda: reader.recv(512))
            try:
                ticks = 0
                while not await self.on_tick(ticks):
                    ticks += 10  # on_tick refreshes the Date header when ticks % 10 == 0: each tick is a second
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), 1.0)
            finally:
                self._loop.remove_reader(reader.fileno())
                signal.set_wakeup_fd(previous)
                reader.close()
                writer.close()

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)

    # No access log: query strings carry download tokens; the app logs method, path and status itself.
    options: dict[str, Any] = dict(factory=True, host=args.host, port=args.port, workers=args.workers,
                                   access_log=False, log_level="warning", server_header=False,
                                   timeout_graceful_shutdown=10)
    if args.workers > 1:  # uvicorn's own process manager (each of its processes runs uvicorn's plain server)
        uvicorn.run("workers.api:create_app", **options)
        return 0
    server = QuietServer(uvicorn.Config("workers.api:create_app", **options))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:  # as uvicorn.run: the app or the socket failed at start (uvicorn logged why)
        return STARTUP_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
