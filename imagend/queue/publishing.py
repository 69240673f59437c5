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
import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from imagend.backends.base import Image
from imagend.config.settings import Settings
from imagend.db.rows import Claim, Finished
from imagend.errors import RowError
from imagend.images.formats import Encoded, encode, sniff, thumbnail
from imagend.images.post import apply_post
from imagend.storage import Store, StoredObject, StoreUnavailable, object_names
from imagend.storage.health import StoreHealth


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class _Picture:
    """One image of a row, encoded in the row's format (after its preset's post-processing), and its thumbnail."""

    image: Image
    encoded: Encoded
    thumbnail: bytes | None


@dataclass(frozen=True, slots=True)
class _Prepared:
    claim: Claim
    image: Image
    encoded: Encoded
    thumbnail: bytes | None
    # A row of n > 1 images: every image, the first included (stored as `<id>-<k>.<ext>`); () for one image.
    pictures: tuple[_Picture, ...] = ()


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
            plain = [(claim, image) for claim, image in results
                     if claim.output is None and not claim.post and not image.others]
            if len(plain) == len(results):  # the common case: nothing but base64
                return [_plain(claim, image) for claim, image in plain], []
        failed: list[tuple[Claim, RowError]] = []
        prepared: list[_Prepared] = []
        for claim, image in results:
            try:
                pictures = tuple(self._picture(claim, picture) for picture in (image, *image.others))
            except RowError as exc:
                failed.append((claim, exc))
                continue
            first = pictures[0]
            prepared.append(_Prepared(claim, image, first.encoded, first.thumbnail,
                                      pictures if image.others else ()))
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

    def _picture(self, claim: Claim, image: Image) -> _Picture:
        encoded = encode(apply_post(image.png, claim.post), claim.output)
        return _Picture(image, encoded, thumbnail(encoded.data, self.thumbnail_px) if self.thumbnail_px else None)

    def _store(
        self, store: Store, prepared: Sequence[_Prepared]
    ) -> list[tuple[list[tuple[str, str | None]], StoreUnavailable | None]]:
        """Every object of the batch in one concurrent round; per row, each image's URL and its thumbnail's
        (None: none), or the first error."""
        objects: list[StoredObject] = []
        owners: list[tuple[int, int, bool]] = []  # (row, image of the row, is its thumbnail)
        for index, item in enumerate(prepared):
            pictures = item.pictures or (_Picture(item.image, item.encoded, item.thumbnail),)
            for k, picture in enumerate(pictures):
                image_name, thumb_name = object_names(item.claim.id, picture.encoded.extension,
                                                      k + 1 if item.pictures else None)
                objects.append(StoredObject(image_name, picture.encoded.data, picture.encoded.content_type))
                owners.append((index, k, False))
                if picture.thumbnail is not None:
                    objects.append(StoredObject(thumb_name, picture.thumbnail, "image/webp"))
                    owners.append((index, k, True))
        found: list[dict[int, list[str | None]]] = [{} for _ in prepared]
        errors: list[StoreUnavailable | None] = [None for _ in prepared]
        for (index, k, is_thumbnail), result in zip(owners, store.put_all(objects), strict=True):
            if isinstance(result, StoreUnavailable):
                errors[index] = errors[index] or result
            else:
                found[index].setdefault(k, [None, None])[int(is_thumbnail)] = result
        outcome: list[tuple[list[tuple[str, str | None]], StoreUnavailable | None]] = []
        for urls, error in zip(found, errors, strict=True):
            pairs = [(str(urls[k][0]), urls[k][1]) for k in sorted(urls)] if error is None else []
            outcome.append((pairs, error))
        return outcome

    def _in_store(self, item: _Prepared, urls: list[tuple[str, str | None]]) -> Finished:
        output_url, thumbnail_url = urls[0]
        listed = None
        if item.pictures:
            listed = json.dumps([
                {"index": k, "seed": picture.image.seed, "format": picture.encoded.format, "url": url,
                 "path": _path_of(url), "thumbnail_url": thumb}
                for k, (picture, (url, thumb)) in enumerate(zip(item.pictures, urls, strict=True), start=1)
            ])
        return _made_with(item.image, Finished(
            claim=item.claim,
            base64=b64(item.encoded.data) if self.store_base64 else None,
            seed=item.image.seed,
            # The column the older IMAGEND_OUTPUT_DIR filled: the path, for a folder target.
            output_path=_path_of(output_url),
            generation_seconds=item.image.generation_seconds,
            output_url=output_url,
            thumbnail_url=thumbnail_url,
            format=item.encoded.format,
            images=listed,
            other_urls=tuple(url for pair in urls[1:] for url in pair if url),
        ))

    def _in_row(self, item: _Prepared, warning: str | None = None, spooled: bool = False) -> Finished:
        listed = None
        if item.pictures:
            listed = json.dumps([
                {"index": k, "seed": picture.image.seed, "format": picture.encoded.format,
                 "base64": b64(picture.encoded.data),
                 "thumbnail": b64(picture.thumbnail) if picture.thumbnail is not None else None}
                for k, picture in enumerate(item.pictures, start=1)
            ])
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
            images=listed,
        ))


def _path_of(url: str) -> str | None:
    """The file's path of a folder target's URL (None for a bucket's)."""
    return unquote(urlsplit(url).path) if url.startswith("file:") else None


def _plain(claim: Claim, image: Image) -> Finished:
    return Finished(claim, b64(image.png), image.seed, None, image.generation_seconds, format=sniff(image.png),
                    width=image.width, height=image.height, steps=image.steps, guidance=image.guidance,
                    scheduler=image.scheduler)


def _made_with(image: Image, finished: Finished) -> Finished:
    """`finished` with what made `image` (its size, steps, guidance, scheduler), for the row's NULL columns.
    A format conversion keeps the size."""
    return dataclasses.replace(finished, width=image.width, height=image.height, steps=image.steps,
                               guidance=image.guidance, scheduler=image.scheduler)
