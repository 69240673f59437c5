"""Who may do what over HTTP (one home for the policy):

- Writes (the API's POSTs, the dashboard's cancel/retry/pause buttons) need IMAGEND_HTTP_TOKEN set
  and the request carrying it (`Authorization: Bearer …`, compared in constant time): 401 without
  it or with a wrong one, 403 when no token is configured (writes are off).
- Reads are open on a loopback address (unless IMAGEND_HTTP_READ_TOKEN=required: then everywhere,
  for a reverse proxy on the same host); on any other address they need the token too: the
  header, or the read cookie POST /session sets for a browser, so that images and pages opened by
  a link load. The cookie is `<expiry>.<HMAC of the expiry keyed by the token>`: HttpOnly,
  SameSite=Strict, Max-Age READ_COOKIE_SECONDS and refused past its expiry whatever the browser
  keeps; DELETE /session drops it from a browser, and changing the token revokes every one. It
  never allows a write: a cross-site page cannot add the header writes need.
- Which `Host` a request may name is guards.py's (DNS rebinding).
- Owner keys (docs/owners.md, "API keys"): `Authorization: Bearer imk_…`, created by `imagend -key-create`,
  bound to one owner and its scopes (submit, read, cancel, delete). `authorize` says who calls: the operator
  (the token, or an open read) or an owner, whose requests the routes confine to that owner's rows (404 for
  any other). A key is looked up at every request (no cache): a revoked one is refused from the next on;
  a request already past its check finishes.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from starlette.requests import Request

from imagend.db.owners import KEY_PREFIX, OwnersRepository
from imagend.http.context import HttpContext

READ_COOKIE = "imagend_read"
READ_COOKIE_SECONDS = 12 * 3600  # a working day's dashboard; the token pasted again after it
_COOKIE_PURPOSE = b"imagend: dashboard reads until "


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _token_matches(context: HttpContext, request: Request) -> bool:
    token = context.http.token
    given = _bearer(request)
    if token is None or given is None:
        return False
    return hmac.compare_digest(given.encode(), token.reveal().encode())


def check_write(context: HttpContext, request: Request) -> None:
    if context.http.token is None:
        raise Refused(403, "writes over HTTP are off: set IMAGEND_HTTP_TOKEN to allow them")
    check_token(context, request)


def _signature(context: HttpContext, expires: int) -> str | None:
    token = context.http.token
    if token is None:
        return None
    return hmac.new(token.reveal().encode(), _COOKIE_PURPOSE + str(expires).encode(), hashlib.sha256).hexdigest()


def read_cookie_value(context: HttpContext, now: float | None = None) -> str | None:
    """A new read cookie, valid READ_COOKIE_SECONDS from `now`; None without a token."""
    expires = int(now if now is not None else time.time()) + READ_COOKIE_SECONDS
    signature = _signature(context, expires)
    return f"{expires}.{signature}" if signature is not None else None


def _cookie_valid(context: HttpContext, value: str | None) -> bool:
    if not value:
        return False
    expires_text, _, given = value.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12 or int(expires_text) <= time.time():
        return False
    expected = _signature(context, int(expires_text))
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def check_token(context: HttpContext, request: Request) -> None:
    """The request carries the token in its header (401 otherwise)."""
    if not _token_matches(context, request):
        raise Refused(401, "this needs the token: send 'Authorization: Bearer <IMAGEND_HTTP_TOKEN>'")


def check_read(context: HttpContext, request: Request) -> None:
    required = context.policy.read_token_required
    if context.http.loopback and not required:
        return
    if _token_matches(context, request) or _cookie_valid(context, request.cookies.get(READ_COOKIE)):
        return
    if required:
        raise Refused(401, "reads need the token here (IMAGEND_HTTP_READ_TOKEN=required): 'Authorization: Bearer …'")
    raise Refused(401, "reads on a non-loopback address need the token: 'Authorization: Bearer …'")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request is: the operator (owner None: every row) or an owner's key (that owner's rows only)."""

    owner: str | None


OPERATOR = Caller(owner=None)


def authorize(context: HttpContext, request: Request, scope: str) -> Caller:
    """The caller of a route that needs `scope` (submit, read, cancel, delete): an owner's key (401 unknown
    or revoked, 403 without the scope), else the operator's policy (reads: check_read; the rest: the token)."""
    given = _bearer(request)
    if given is not None and given.startswith(KEY_PREFIX):
        key = OwnersRepository(context.ops.pool).find_key(given)
        if key is None:
            raise Refused(401, "this API key is unknown or revoked")
        if scope not in key.scopes:
            raise Refused(403, f"this API key lacks the {scope!r} scope (it has: {', '.join(key.scopes)})")
        return Caller(owner=key.owner)
    if scope == "read":
        check_read(context, request)
    else:
        check_write(context, request)
    return OPERATOR


def sees(context: HttpContext, caller: Caller, image_id: int | None) -> bool:
    """Whether `caller` may see row `image_id` at all: the operator any, an owner its own (a row of another
    owner, or none, reads as no such row: 404, never 403, so ids do not tell whose rows exist)."""
    if image_id is None:
        return False
    if caller.owner is None:
        return True
    exists, owner = OwnersRepository(context.ops.pool).owner_of(image_id)
    return exists and owner == caller.owner
