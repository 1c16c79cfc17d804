"""What an error quotes of a request, clipped: a status travels in trailers of bounded size."""

from __future__ import annotations

__all__ = ["ECHO_CHARS", "MESSAGE_BYTES", "clip", "clip_metadata", "echo"]

# A status travels in HTTP/2 trailers: grpc-message (percent-encoded, a non-ASCII byte takes three)
# and grpc-status-details-bin (the google.rpc.Status again, in base64). Past 8 KiB of them grpcio
# fails the call with RESOURCE_EXHAUSTED "Stream removed" instead: with these bounds a status's
# trailers stay under 4 KiB whatever it echoes (its message 1.5 KiB at most, its details 2.3 KiB).
# The characters of a value an error quotes; a message's, a metadata entry's and all metadata's UTF-8 bytes.
ECHO_CHARS, MESSAGE_BYTES, VALUE_BYTES, METADATA_BYTES = 120, 512, 256, 1024


def echo(value: str, limit: int = ECHO_CHARS) -> str:
    """``value`` quoted as an error shows it: up to ``limit`` characters, then an ellipsis and its length."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value):,} characters)"


def clip(text: str, limit: int = MESSAGE_BYTES) -> str:
    """``text`` within ``limit`` UTF-8 bytes: cut on a character boundary, then an ellipsis and its full length."""
    if len(text) * 4 <= limit or len(data := text.encode("utf-8", "surrogatepass")) <= limit:
        return text
    suffix = f"... ({len(text):,} characters)"
    return data[: max(limit - len(suffix), 0)].decode("utf-8", "ignore") + suffix


def clip_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """Each key and value clipped to VALUE_BYTES, and the entries past METADATA_BYTES in all left out."""
    clipped, left = {}, METADATA_BYTES
    for key, value in metadata.items():
        key, value = clip(key, VALUE_BYTES), clip(value, VALUE_BYTES)
        left -= len(key.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass")) + 8
        if left < 0:  # (8: the tags and lengths of a map entry)
            break
        clipped[key] = value
    return clipped
