"""Connection-string checks: the libpq URL or keyword string of DATABASE_URL (and the like) checked
before any connection, and its passwords found so that no error or log line shows them."""

from __future__ import annotations

import re

from imagend.errors import ConfigError

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_URI_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^@/:]*:([^@/]*)@", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)")


def conninfo_passwords(conninfo: str) -> list[str]:
    """The password(s) written in a libpq URL or key=value string, as written and decoded, longest
    first; found by pattern, so even in a string libpq cannot parse."""
    from urllib.parse import unquote

    found: set[str] = set()
    for pattern in (_URI_PASSWORD, _QUERY_PASSWORD, _KEYWORD_PASSWORD):
        for match in pattern.finditer(conninfo):
            value = match.group(1)
            found.update({value, value.strip("'"), unquote(value)})
    return sorted((p for p in found if p), key=len, reverse=True)


def hide_password(text: str, conninfo: str) -> str:
    """`text` (a libpq message, which may quote the string it parsed) with the password starred."""
    for password in conninfo_passwords(conninfo):
        text = text.replace(password, "***")
    return text


def check_conninfo(name: str, conninfo: str) -> dict[str, str]:
    """Parse a libpq URL or key=value string the way libpq will, and check what libpq only checks
    at the first connect (sslmode, port): a bad value names the variable, never the password."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    except ProgrammingError as exc:
        reason = hide_password(str(exc).strip(), conninfo)
        raise ConfigError(f"{name} is not a valid libpq URL or connection string: {reason}") from None
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in SSL_MODES:
        raise ConfigError(f"{name}: sslmode={sslmode!r} is not one of: {', '.join(SSL_MODES)}")
    for port in params.get("port", "").split(","):
        if port.strip() and not (port.strip().isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"{name}: port={port!r} is not a port number (1-65535)")
    return params


