"""The JSON error every route answers with: `{"error": "<readable message>"}`."""

from __future__ import annotations

from starlette.responses import JSONResponse


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
