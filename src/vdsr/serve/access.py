"""Who may use ``vdsr serve``: the ``Host`` names it answers to and the sites whose pages may
call it (against cross-site requests and DNS rebinding), as an ASGI middleware.

Any web page a user visits can send requests to a server on the user's machine. Two checks keep
such pages out; clients that are not browsers (curl, scripts) send neither header and pass.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from vdsr.errors import InvalidArgument

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_WILDCARDS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Access:
    """Who may use the server: which ``Host`` names it answers to, which other sites' pages may
    POST to it.

    A web page on any site can send requests to a server on this machine; two checks keep such
    pages out. ``Host`` must be the bound address, a loopback name, or a name in ``hosts``: a
    page whose own name resolves here ("DNS rebinding") sends its own name. An unsafe request
    (POST ...) from a browser must come from this server's own page or from ``origins``. Clients
    that are not browsers send neither ``Origin`` nor ``Sec-Fetch-Site`` and are served.

    Attributes:
        host: the address the server is bound to. A wildcard (``0.0.0.0``, ``::``) accepts any
            IP address as ``Host`` (an address cannot be rebound); names still need ``hosts``.
        hosts: more names (``photos.example``) the server is reached by.
        origins: other origins (``https://photos.example``) whose pages may use the API; they
            are also sent the CORS headers that let those pages read the answers.
    """

    host: str = "127.0.0.1"
    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        origins = tuple(_origin(o) for o in self.origins)
        hosts = tuple(_hostname(h) for h in self.hosts)
        for origin, given in zip(origins, self.origins, strict=True):
            if origin is None:
                raise InvalidArgument(f"origin {given!r} is not scheme://host[:port] "
                                      "(for example https://photos.example)")
        object.__setattr__(self, "origins", origins)
        object.__setattr__(self, "hosts", hosts)

    def host_refusal(self, host: str | None) -> str | None:
        """Why a request with ``Host: host`` is refused, or ``None`` if it is served."""
        if host is None:  # HTTP/1.0 without Host: not a browser
            return None
        name = _hostname(host)
        if name in LOCAL_HOSTS or name in self.hosts or name == _hostname(self.host):
            return None
        if _hostname(self.host) in _WILDCARDS and _is_ip(name):
            return None
        known = ", ".join(dict.fromkeys([_hostname(self.host), *LOCAL_HOSTS, *self.hosts]))
        return f"host {host!r} is not one this server answers to ({known})"

    def origin_refusal(self, scheme: str, host: str | None, origin: str | None,
                       fetch_site: str | None) -> str | None:
        """Why an unsafe request (POST ...) is refused as cross-site, or ``None`` if it is served."""
        if origin is not None:
            own = f"{scheme}://{(host or '').lower()}"
            if origin.lower() == own or _origin(origin) in self.origins:
                return None
            return f"cross-origin request from {origin} refused (this server's page is {own})"
        if fetch_site in ("cross-site", "same-site"):
            return f"{fetch_site} request refused: use this server's own page"
        return None


def _hostname(host: str) -> str:
    """``Host`` header or address -> lower-case name without port, brackets or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:  # name:port (an IPv6 address has more colons)
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _origin(text: str) -> str | None:
    """``scheme://host[:port]`` normalised (lower case, no trailing slash), or ``None`` if not one."""
    try:
        parts = urlsplit(text.strip().rstrip("/"))
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + ("" if port is None else f":{port}")


class Guard:
    """ASGI middleware: refuses, with 403, requests for a foreign ``Host`` and cross-site unsafe
    requests (see :class:`Access`) before the app sees them."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            host = request_headers.get("host")
            unsafe = scope["method"] not in ("GET", "HEAD", "OPTIONS")
            refusal = self.access.host_refusal(host)
            if refusal is None and unsafe:
                refusal = self.access.origin_refusal(scope["scheme"], host, request_headers.get("origin"),
                                                     request_headers.get("sec-fetch-site"))
            if refusal is not None:
                headers = {"Connection": "close"} if unsafe else None  # an unsafe request's body is unread
                await JSONResponse({"error": refusal}, status_code=403, headers=headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
