"""Links a browser can open (issue 23): where a finished row's image and thumbnail are, for the JSON
API's `image_url`/`thumbnail_url`, the webhooks' events and the dashboard.

In order of preference:
1. IMAGEND_PUBLIC_BASE_URL (a CDN, or a public bucket): the base plus the object's key (S3) or file
   name (a folder); the operator vouches that the base serves the store.
2. An S3 store: a presigned GET, valid IMAGEND_LINK_SECONDS (computed locally, no request).
3. Anything else (a folder, or the image only in the row): a link to this listener, signed with HMAC-SHA256
   and expiring (`?expires=<unix seconds>&signature=<hex>`); the listener serves it without a token.
   The key: IMAGEND_LINK_SECRET, else one derived from IMAGEND_HTTP_TOKEN (changing either revokes
   every link). Without either, the plain path (reads then follow the listener's read policy).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import quote, urlsplit

from imagend.storage import Store

KINDS = ("image", "thumbnail")
SIGNATURE_HEX_CHARS = 64
STEPS_PER_LINK = 4  # a link is reused for a quarter of its life
PRESIGNED_KEPT = 4096  # presigned URLs kept for reuse, per listener (or webhook thread)
_DERIVE_LABEL = b"imagend image links v1"


def derive_secret(token: str) -> bytes:
    """The link key derived from the listener's token (so a link never reveals the token)."""
    return hmac.new(token.encode(), _DERIVE_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True)
class Links:
    """A link stays the same for a quarter of IMAGEND_LINK_SECONDS (its expiry rounded up to that step;
    a presigned URL kept that long), so a page refreshed every second keeps its images cached; each
    link is valid for at least IMAGEND_LINK_SECONDS."""

    store: Store | None
    secret: bytes | None
    seconds: float
    public_base_url: str | None = None
    clock: Callable[[], float] = time.time
    _presigned: dict[str, tuple[float, str]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def step(self) -> float:
        return max(1.0, self.seconds / STEPS_PER_LINK)

    # -- signing -------------------------------------------------------------------------

    def _mac(self, image_id: int, kind: str, expires: int) -> str:
        assert self.secret is not None
        message = f"{image_id}:{kind}:{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def signed_path(self, image_id: int, kind: str) -> str:
        """`/v1/images/{id}/{kind}`, signed and expiring when a key is configured, else plain."""
        path = f"/v1/images/{image_id}/{kind}"
        if self.secret is None:
            return path
        expires = int(math.ceil((self.clock() + self.seconds) / self.step) * self.step)
        return f"{path}?expires={expires}&signature={self._mac(image_id, kind, expires)}"

    def valid(self, image_id: int, kind: str, expires: str | None, signature: str | None) -> bool:
        """Whether a request's `expires` and `signature` open `kind` of row `image_id` now."""
        if self.secret is None or expires is None or signature is None:
            return False
        if not expires.isdigit() or len(expires) > 12 or len(signature) != SIGNATURE_HEX_CHARS:
            return False
        if int(expires) < self.clock():
            return False
        return hmac.compare_digest(self._mac(image_id, kind, int(expires)), signature.lower())

    # -- a row's links ---------------------------------------------------------------------

    def _public(self, location: str) -> str | None:
        if self.public_base_url is None or self.store is None:
            return None
        parts = urlsplit(location)
        if parts.scheme == "s3":
            target = self.store.target
            if parts.netloc != target.bucket:
                return None
            return f"{self.public_base_url}/{quote(parts.path.lstrip('/'))}"
        if parts.scheme in ("", "file"):
            return f"{self.public_base_url}/{quote(PurePosixPath(parts.path).name)}"
        return None

    def _presign(self, stored_url: str) -> str | None:
        """The store's presigned URL, valid `seconds + step`, kept for `step` (a few thousand at most)."""
        assert self.store is not None
        now = self.clock()
        kept = self._presigned.get(stored_url)
        if kept is not None and now - kept[0] < self.step:
            return kept[1]
        presigned = self.store.presign(stored_url, self.seconds + self.step)
        if presigned is not None:
            if len(self._presigned) >= PRESIGNED_KEPT:
                self._presigned.clear()
            self._presigned[stored_url] = (now, presigned)
        return presigned

    def origins(self) -> list[str]:
        """Where else than the listener a link may point (for a page's Content-Security-Policy img-src)."""
        found = []
        if self.public_base_url is not None:
            parts = urlsplit(self.public_base_url)
            found.append(f"{parts.scheme}://{parts.netloc}")
        if self.store is not None and self.store.target.bucket is not None:
            endpoint = self.store.target.endpoint_url
            if endpoint:
                parts = urlsplit(endpoint)
                found.append(f"{parts.scheme}://{parts.netloc}")
            else:  # AWS: the bucket's virtual host, in whatever region it is
                found.append("https://*.amazonaws.com")
        return found

    def link(self, image_id: int, kind: str, stored_url: str | None, available: bool) -> str | None:
        """The browser-ready link to `kind` of row `image_id` (None when it has none); `stored_url` is
        the store's location of it (output_url or thumbnail_url), `available` whether there is any."""
        if not available:
            return None
        if stored_url:
            public = self._public(stored_url)
            if public is not None:
                return public
            if self.store is not None and stored_url.startswith("s3://"):
                presigned = self._presign(stored_url)
                if presigned is not None:
                    return presigned
        return self.signed_path(image_id, kind)
