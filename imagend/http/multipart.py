"""multipart/form-data bodies (the OpenAI API's edits and variations), parsed from a body already read
under its size limit (checks.read_body). Small on purpose: Starlette's own parser needs the
python-multipart package, which the daemon does not otherwise install. Fields are text (UTF-8), files
are bytes; a field named twice (`image[]`) keeps every value in order."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_PARTS = 64
_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)
_PARAM = re.compile(r'(\w+)\*?="((?:[^"\\]|\\.)*)"|(\w+)=([^;\s]+)')


class MultipartError(Exception):
    pass


@dataclass
class Part:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise MultipartError(f"the field {self.name!r} is not UTF-8 text") from None


@dataclass
class Form:
    parts: list[Part] = field(default_factory=list)

    def all(self, *names: str) -> list[Part]:
        return [part for part in self.parts if part.name in names]

    def names(self) -> list[str]:
        return list(dict.fromkeys(part.name for part in self.parts))


def boundary_of(content_type: str) -> str | None:
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    match = _BOUNDARY.search(content_type)
    return match.group(1) if match else None


def parse(body: bytes, content_type: str) -> Form:
    boundary = boundary_of(content_type)
    if boundary is None:
        raise MultipartError("the body must be multipart/form-data with a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise MultipartError("the multipart body is incomplete (no closing boundary)")
    if len(chunks) - 2 > MAX_PARTS:
        raise MultipartError(f"the multipart body has more than {MAX_PARTS} parts")
    form = Form()
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
            raise MultipartError("a multipart part is not framed by CRLF")
        head, sep, data = chunk[2:-2].partition(b"\r\n\r\n")
        if not sep:
            raise MultipartError("a multipart part has no headers")
        form.parts.append(_part(head, data))
    return form


def _part(head: bytes, data: bytes) -> Part:
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", errors="replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    disposition = headers.get("content-disposition", "")
    if not disposition.lower().startswith("form-data"):
        raise MultipartError("a multipart part is not form-data")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(disposition):
        if match.group(1):
            params.setdefault(match.group(1).lower(), match.group(2).replace('\\"', '"'))
        else:
            params.setdefault(match.group(3).lower(), match.group(4))
    if "name" not in params:
        raise MultipartError("a multipart part has no name")
    return Part(name=params["name"], data=data, filename=params.get("filename"),
                content_type=headers.get("content-type"))
