"""Who may do what over HTTP (one home for the policy):

- Writes (the API's POSTs, the dashboard's cancel/retry/pause buttons) need IMAGEND_HTTP_TOKEN set
  and the request carrying it (`Authorization: Bearer …`, compared in constant time): 401 without
  it or with a wrong one, 403 when no token is configured (writes are off).
- Reads are open on a loopback address; on any other address they need the token too: the
  header, or the read cookie POST /session sets for a browser (an HMAC of the token, HttpOnly,
  SameSite=Strict), so that images and pages opened by a link load. The cookie never allows a
  write: a cross-site page cannot add the header writes need.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from imagend.http.context import HttpContext


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


READ_COOKIE = "imagend_read"


def read_cookie_value(context: HttpContext) -> str | None:
    token = context.http.token
    if token is None:
        return None
    return hmac.new(token.reveal().encode(), b"imagend: dashboard reads", hashlib.sha256).hexdigest()


def check_token(context: HttpContext, request: Request) -> None:
    """The request carries the token in its header (401 otherwise)."""
    if not _token_matches(context, request):
        raise Refused(401, "this needs the token: send 'Authorization: Bearer <IMAGEND_HTTP_TOKEN>'")


def check_read(context: HttpContext, request: Request) -> None:
    if context.http.loopback:
        return
    if _token_matches(context, request):
        return
    expected, given = read_cookie_value(context), request.cookies.get(READ_COOKIE)
    if expected is not None and given is not None and hmac.compare_digest(given.encode(), expected.encode()):
        return
    raise Refused(401, "reads on a non-loopback address need the token: 'Authorization: Bearer …'")
