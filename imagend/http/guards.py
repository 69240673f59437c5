"""What every request meets before the routes (pure ASGI, answering the API's JSON error):

- The Host check, against DNS rebinding: a web page the operator opens can point a name of its own
  at 127.0.0.1 and read a loopback listener, whose reads need no token; its requests carry that
  name in `Host`. Allowed: the bind address, localhost, 127.0.0.1, ::1 and IMAGEND_HTTP_ALLOWED_HOSTS
  (comma-separated names or addresses; `*`: any). On a wildcard bind (0.0.0.0, ::) reads need the
  token anyway and clients use the host's names, so `Host` is checked there only when the list is
  set. Anything else: 421, except /healthz and /readyz, which answer anyone anyway (a kubelet's
  probe names the pod's address).
- Admission: at most MAX_IN_FLIGHT requests run at once (503 past it, with Retry-After); the
  probes and /metrics are never counted or refused.

The listener's settings read here (IMAGEND_HTTP_ALLOWED_HOSTS, IMAGEND_HTTP_READ_TOKEN) come from
the settings' typed environment reader; `ListenerPolicy.read` names the variable in every error.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from imagend.config.env import Env
from imagend.config.settings import HttpSettings
from imagend.errors import ConfigError, clip
from imagend.http.responses import error

MAX_IN_FLIGHT = 64
# Never refused nor counted: a load balancer and Prometheus must see the daemon whatever the load.
UNCOUNTED = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN_PROBES = frozenset({"/healthz", "/readyz"})  # no token, ever: a Host check would protect nothing
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
READ_TOKEN_CHOICES = ("loopback-open", "required")
HOST_ECHO_MAX_CHARS = 80


@dataclass(frozen=True)
class ListenerPolicy:
    """allowed_hosts: the names `Host` may carry (None: any); read_token_required: reads need the
    token (header or read cookie) on every bind, loopback included."""

    allowed_hosts: frozenset[str] | None
    read_token_required: bool

    @classmethod
    def read(cls, env: Env, http: HttpSettings) -> ListenerPolicy:
        listed = env.str("IMAGEND_HTTP_ALLOWED_HOSTS")
        names = {_host_name(part) for part in (listed or "").split(",") if part.strip()}
        if "" in names:
            raise ConfigError(f"IMAGEND_HTTP_ALLOWED_HOSTS={listed!r}: list host names or addresses, comma-separated")
        allowed: frozenset[str] | None
        if "*" in names or (listed is None and http.host in WILDCARD_BINDS):
            allowed = None
        else:
            bind = {http.host.lower()} if http.host not in WILDCARD_BINDS else set()
            allowed = frozenset(LOOPBACK_NAMES | bind | names)
        required = env.choice("IMAGEND_HTTP_READ_TOKEN", "loopback-open", READ_TOKEN_CHOICES) == "required"
        if required and http.token is None:
            raise ConfigError("IMAGEND_HTTP_READ_TOKEN=required needs IMAGEND_HTTP_TOKEN: reads would be "
                              "refused to everyone")
        return cls(allowed_hosts=allowed, read_token_required=required)


def _host_name(value: str) -> str:
    """`Host`'s name without its port, lower case: `[::1]:9464` → `::1`, `Example.COM.:80` → `example.com`."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, _ = value[1:].partition("]")
        return name
    if value.count(":") > 1:
        return value  # a bare IPv6 address (a list entry)
    return value.partition(":")[0].rstrip(".")


class Guards:
    """The Host check and admission around the Starlette app."""

    def __init__(self, app: ASGIApp, policy: ListenerPolicy, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.app = app
        self.policy = policy
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # the event loop's thread only: no lock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed = self.policy.allowed_hosts
        if allowed is not None and scope["path"] not in OPEN_PROBES:
            host = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), None)
            # No Host at all (HTTP/1.0, a bare probe): not a browser's request, so no rebinding.
            if host is not None and _host_name(host) not in allowed:
                shown = clip(host, HOST_ECHO_MAX_CHARS)
                await error(421, f"this listener does not answer for host {shown!r}: add it to "
                                 "IMAGEND_HTTP_ALLOWED_HOSTS if it names this daemon")(scope, receive, send)
                return
        if scope["path"] in UNCOUNTED:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            busy = error(503, f"busy: {self.in_flight} requests are being answered; try again in a second")
            busy.headers["Retry-After"] = "1"
            await busy(scope, receive, send)
            return
        self.in_flight += 1
        released = False

        def release() -> None:
            """A request that only waits for its rows now (the compatible APIs, once queued) stops counting."""
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1

        scope["imagend.release_admission"] = release
        try:
            await self.app(scope, receive, send)
        finally:
            release()
