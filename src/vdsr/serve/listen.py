"""``vdsr serve``: the socket bound first (a port in use is one clear error, not uvicorn's exit), uvicorn
with time limits for slow clients, and a shutdown that ends the jobs first."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from vdsr.errors import (
    AddressUnavailable,
)
from vdsr.serve.access import Access
from vdsr.serve.jobs import Limits
from vdsr.serve.server import Service, create_app

__all__ = ["listen_socket", "serve", "uvicorn_config"]


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port``; raises :class:`AddressUnavailable` if it cannot be.

    Bound here rather than by uvicorn, which logs a multi-line error and exits the process
    itself (code 3) when the port is taken.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise AddressUnavailable(host, port, f"unknown host ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise AddressUnavailable(host, port, reason) from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: FastAPI, host: str, port: int, limits: Limits, **options: Any) -> Any:
    """uvicorn's configuration for ``app``, with the time limits for slow clients."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=_protocol(limits.head_seconds),
                          timeout_keep_alive=limits.keep_alive_seconds, **options)


def _protocol(head_seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's line and headers.

    uvicorn closes idle connections only after an answer (keep-alive); a connection that never
    completes its headers stays open for ever. This one is closed ``head_seconds`` after it
    opened, or after its last answer, unless a request has begun.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_cycle: object = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not self._head_cycle:  # a request has begun
                self._disarm()

        def on_response_complete(self) -> None:
            finished = self.cycle
            super().on_response_complete()
            if self.cycle is finished:  # else a pipelined request has begun
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_cycle = self.cycle
            self._head_timer = self.loop.call_later(head_seconds, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.cycle is self._head_cycle and not self.transport.is_closing():
                self.transport.close()

    return TimedH11Protocol


def serve(host: str = "127.0.0.1", port: int = 8000, weights: str | None = None,
          limits: Limits | None = None, device: str = "auto", precision: str = "auto",
          on_ready: Callable[[str], None] | None = None, allow_hosts: tuple[str, ...] = (),
          allow_origins: tuple[str, ...] = ()) -> None:
    """Run the app with uvicorn until interrupted; ``on_ready(url)`` is called once it is loaded.

    Raises :class:`AddressUnavailable` before loading the model if the port cannot be used.
    On SIGINT/SIGTERM the server stops at once: jobs end at their next tile and their clients
    are told (503); waiting jobs are dropped.
    """
    import uvicorn

    limits = limits or Limits()
    access = Access(host=host, hosts=allow_hosts, origins=allow_origins)
    sock = listen_socket(host, port)
    try:
        app = create_app(weights, limits, device=device, precision=precision, access=access)
        if on_ready is not None:
            shown = f"[{host}]" if ":" in host else host
            on_ready(f"http://{shown}:{sock.getsockname()[1]}")
        service: Service = app.state.service

        class Server(uvicorn.Server):
            async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
                service.close()  # the jobs end first, so the graceful wait is short
                await super().shutdown(sockets)
                if self.force_exit:  # a second Ctrl-C: uvicorn skips the app's shutdown, whose
                    await self.lifespan.shutdown()  # task would be cancelled with a traceback

        Server(uvicorn_config(app, host, port, limits, log_level="info")).run(sockets=[sock])
    finally:
        sock.close()
