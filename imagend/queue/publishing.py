"""Turning finished Images into what their rows store: the image in the row's format, written to the
storage target first (with its thumbnail), then base64 and the locations for images_mark_done.

An image the store cannot take (down, full, refusing) is never thrown away and never costs its row an
attempt: it is spooled, kept in the row's base64 (`spooled_at` set, a warning saying so) until the spool
(maintenance/spool.py) writes it to the store, and the store's health is marked down (StoreHealth), so
the daemon stops claiming until the store takes writes again.

With no storage target, no thumbnail and no format asked, a row costs one base64 encoding and nothing
else: the drain's finishing path stays as lean as before storage existed.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from imagend.backends.base import Image
from imagend.config.settings import Settings
from imagend.db.rows import Claim, Finished
from imagend.errors import RowError
from imagend.images.formats import Encoded, encode, sniff, thumbnail
from imagend.storage import Store, StoredObject, StoreUnavailable, object_names
from imagend.storage.health import StoreHealth


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class _Prepared:
    claim: Claim
    image: Image
    encoded: Encoded
    thumbnail: bytes | None


class Results:
    """Publishing into the daemon's one store (built at start by cli.py), or into the row alone."""

    def __init__(self, settings: Settings, store: Store | None, health: StoreHealth | None = None) -> None:
        self.store = store
        self.health = health or StoreHealth()
        self.store_base64 = settings.store_base64
        self.thumbnail_px = settings.thumbnail_px

    def finished(
        self, results: Sequence[tuple[Claim, Image]]
    ) -> tuple[list[Finished], list[tuple[Claim, RowError]]]:
        """What to write for each result, and the results whose attempt fails instead (an image that
        does not decode or encode). A store that refuses an image spools it (see above)."""
        if self.store is None and not self.thumbnail_px:
            plain = [(claim, image) for claim, image in results if claim.output is None]
            if len(plain) == len(results):  # the common case: nothing but base64
                return [_plain(claim, image) for claim, image in plain], []
        failed: list[tuple[Claim, RowError]] = []
        prepared: list[_Prepared] = []
        for claim, image in results:
            try:
                encoded = encode(image.png, claim.output)
                thumb = thumbnail(encoded.data, self.thumbnail_px) if self.thumbnail_px else None
            except RowError as exc:
                failed.append((claim, exc))
                continue
            prepared.append(_Prepared(claim, image, encoded, thumb))
        if self.store is None:
            return [self._in_row(p) for p in prepared], failed
        stored = self._store(self.store, prepared)
        rows = []
        for item, (urls, error) in zip(prepared, stored, strict=True):
            if error is None:
                rows.append(self._in_store(item, urls))
            else:
                self.health.failed(str(error))
                rows.append(self._in_row(item, warning=f"{error}; kept in the row until the store takes it",
                                         spooled=True))
        if any(error is None for _, error in stored):
            self.health.succeeded()
        return rows, failed

    def _store(
        self, store: Store, prepared: Sequence[_Prepared]
    ) -> list[tuple[list[str], StoreUnavailable | None]]:
        """Every object of the batch in one concurrent round; per row, its URLs or the first error."""
        objects: list[StoredObject] = []
        owners: list[int] = []
        for index, item in enumerate(prepared):
            image_name, thumb_name = object_names(item.claim.id, item.encoded.extension)
            objects.append(StoredObject(image_name, item.encoded.data, item.encoded.content_type))
            owners.append(index)
            if item.thumbnail is not None:
                objects.append(StoredObject(thumb_name, item.thumbnail, "image/webp"))
                owners.append(index)
        outcome: list[tuple[list[str], StoreUnavailable | None]] = [([], None) for _ in prepared]
        for index, result in zip(owners, store.put_all(objects), strict=True):
            urls, error = outcome[index]
            if isinstance(result, StoreUnavailable):
                outcome[index] = (urls, error or result)
            else:
                urls.append(result)
        return outcome

    def _in_store(self, item: _Prepared, urls: list[str]) -> Finished:
        output_url = urls[0]
        return _made_with(item.image, Finished(
            claim=item.claim,
            base64=b64(item.encoded.data) if self.store_base64 else None,
            seed=item.image.seed,
            # The column the older IMAGEND_OUTPUT_DIR filled: the path, for a folder target.
            output_path=unquote(urlsplit(output_url).path) if output_url.startswith("file:") else None,
            generation_seconds=item.image.generation_seconds,
            output_url=output_url,
            thumbnail_url=urls[1] if len(urls) > 1 else None,
            format=item.encoded.format,
        ))

    def _in_row(self, item: _Prepared, warning: str | None = None, spooled: bool = False) -> Finished:
        return _made_with(item.image, Finished(
            claim=item.claim,
            base64=b64(item.encoded.data),
            seed=item.image.seed,
            output_path=None,
            generation_seconds=item.image.generation_seconds,
            warning=warning,
            thumbnail=b64(item.thumbnail) if item.thumbnail is not None else None,
            format=item.encoded.format,
            spooled=spooled,
        ))


def _plain(claim: Claim, image: Image) -> Finished:
    return Finished(claim, b64(image.png), image.seed, None, image.generation_seconds, format=sniff(image.png),
                    width=image.width, height=image.height, steps=image.steps, guidance=image.guidance,
                    scheduler=image.scheduler)


def _made_with(image: Image, finished: Finished) -> Finished:
    """`finished` with what made `image` (its size, steps, guidance, scheduler), for the row's NULL columns.
    A format conversion keeps the size."""
    return dataclasses.replace(finished, width=image.width, height=image.height, steps=image.steps,
                               guidance=image.guidance, scheduler=image.scheduler)
