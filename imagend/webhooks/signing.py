"""Standard Webhooks signatures (https://www.standardwebhooks.com): the headers `webhook-id`,
`webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`), so the receiver verifies with any Standard Webhooks library.

The secret (IMAGEND_WEBHOOK_SECRET): `whsec_<base64>` as those libraries generate it (the key is the
decoded bytes), or any other text (its UTF-8 bytes)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    if secret.startswith(PREFIX):
        try:
            return base64.b64decode(secret[len(PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def signature(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(key: bytes, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, event_id, timestamp, body),
    }


def verify(key: bytes, sent: dict[str, str], body: bytes) -> bool:
    """What a receiver checks (the tests' receiver, docs' example): one of the v1 signatures matches."""
    expected = signature(key, sent["webhook-id"], int(sent["webhook-timestamp"]), body)
    return any(hmac.compare_digest(expected, given) for given in sent["webhook-signature"].split())
