"""Reading and writing HTTP bodies: size limits, Content-Encoding, response compression."""

from __future__ import annotations

import gzip
import zlib

from starlette.requests import Request

from serving.errors import InvalidInput
from serving.protocol.rest import read_raw, too_large

__all__ = ["compress", "read_body"]

#: responses smaller than this are not worth compressing.
_MIN_COMPRESS = 1024


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed per Content-Encoding, refused past `limit` bytes either way."""
    body = await read_raw(request, limit)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidInput(f"unsupported Content-Encoding '{encoding}'; use gzip or deflate")
    # zlib's wbits: 16+ reads a gzip header, plain MAX_WBITS a zlib stream (HTTP's "deflate").
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {encoding} data: {exc}") from None
    if len(out) > limit:
        raise too_large(limit)
    if not inflater.eof:
        raise InvalidInput(f"request body is truncated {encoding} data")
    return out


def compress(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """Compress a response body when the client accepts gzip or deflate and it is worth it."""
    if not accept_encoding or len(body) < _MIN_COMPRESS:
        return body, None
    accepted = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")}
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=5), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 5), "deflate"
    return body, None
