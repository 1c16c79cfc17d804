"""A streaming client of an OpenAI-compatible chat-completions endpoint: each token's text as it arrives, bounded.

POSTs ``{url}/chat/completions`` with ``"stream": true`` (httpx) and reads its server-sent events
(httpx-sse) up to ``data: [DONE]``, yielding each ``choices[0].delta.content`` as soon as its event
is read. Bounded: the call's deadline and ``timeout_seconds`` (whichever comes first) around
connecting and around every event read, the bytes read (MAX_WIRE_BYTES, counted by the transport
before any buffering) and the text (MAX_TEXT_CHARS). The API key goes in the Authorization header
only: every message this module makes has it blotted out, in case an endpoint echoes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import httpx
import httpx_sse

from kosmos_grpc import DeadlineExceeded, DependencyUnavailable, ResourceExhausted
from kosmos_grpc.quoting import clip, echo

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

__all__ = ["MAX_TEXT_CHARS", "MAX_WIRE_BYTES", "ChatCompletions", "shown_url"]

#: The answer's text kept at most (a long answer is some 64 K characters).
MAX_TEXT_CHARS = 1024 * 1024
#: The bytes read of one response at most: each token travels in some 150 bytes of JSON and SSE.
MAX_WIRE_BYTES = 16 * 1024 * 1024
#: What an error quotes of an endpoint's error body.
ERROR_BODY_BYTES = 2048

_DONE = "[DONE]"
_REDACTED = "[redacted]"


def shown_url(url: str) -> str:
    """``url`` as a message shows it: scheme, host, port and path; no user, password nor query."""
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path}"


class _TooManyBytes(Exception):
    """The response passed MAX_WIRE_BYTES."""


class _CappedStream(httpx.AsyncByteStream):
    """A response body that stops with _TooManyBytes past ``limit`` bytes, before anything buffers them."""

    def __init__(self, inner: httpx.AsyncByteStream, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        async for chunk in self._inner:
            read += len(chunk)
            if read > self._limit:
                raise _TooManyBytes
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, each response body read through a _CappedStream."""

    def __init__(self, limit: int) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CappedStream(response.stream, self._limit),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Broken(Exception):
    """The stream failed after it started: why, in a few words."""


class ChatCompletions:
    """One endpoint and model; :meth:`stream` yields an answer's text piece by piece as the endpoint sends it."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None,
        timeout_seconds: float,
        *,
        max_wire_bytes: int = MAX_WIRE_BYTES,
        max_text_chars: int = MAX_TEXT_CHARS,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/chat/completions"
        #: The endpoint as messages name it.
        self.shown = shown_url(self.endpoint)
        self.model = model
        self.timeout_seconds = timeout_seconds
        self.max_text_chars = max_text_chars
        self.max_wire_bytes = max_wire_bytes
        self._key = api_key or None
        self._client = httpx.AsyncClient(
            transport=_CappedTransport(max_wire_bytes), timeout=httpx.Timeout(timeout_seconds)
        )

    def __repr__(self) -> str:  # never the key
        return f"ChatCompletions({self.shown!r}, model={self.model!r})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream(self, messages: Sequence[Mapping[str, str]], call_deadline: float | None) -> AsyncIterator[str]:
        """The answer's text as the endpoint streams it, one piece per event that carries any.

        Raises:
            DependencyUnavailable: the endpoint cannot be reached, answers an HTTP error, does not
                stream, or fails mid-stream (its message says so, and after how many pieces).
            DeadlineExceeded: the call's deadline passed first.
            ResourceExhausted: the answer passed MAX_TEXT_CHARS, or its response MAX_WIRE_BYTES.
        """
        deadline = time.monotonic() + self.timeout_seconds
        by_call = call_deadline is not None and call_deadline < deadline
        if by_call:
            assert call_deadline is not None
            deadline = call_deadline
        headers = {"Accept-Encoding": "identity"}  # counted bytes are the text's: no compression
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key}"
        body = {"model": self.model, "messages": list(messages), "stream": True}
        pieces = size = 0
        started = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout(_left(deadline)):
                    source = await stack.enter_async_context(
                        httpx_sse.aconnect_sse(self._client, "POST", self.endpoint, json=body, headers=headers)
                    )
                    await self._check(source.response)
                started = True
                events = source.aiter_sse()
                stack.push_async_callback(events.aclose)
                while True:
                    async with asyncio.timeout(_left(deadline)):
                        event = await anext(events, None)
                    if event is None:
                        raise _Broken("it closed the stream before data: [DONE]")
                    if event.data.strip() == _DONE:
                        return
                    text = _content(event.data)
                    if not text:
                        continue
                    size += len(text)
                    if size > self.max_text_chars:
                        raise ResourceExhausted(
                            self._said(
                                f"the model's answer from {self.shown} passed {self.max_text_chars:,} characters "
                                f"mid-stream, after {pieces} pieces: cut there"
                            )
                        )
                    pieces += 1
                    yield text
        except TimeoutError:
            if by_call:
                raise DeadlineExceeded(
                    f"the call's deadline passed while waiting for the model at {self.shown} (after {pieces} pieces)"
                ) from None
            raise DependencyUnavailable(
                f"the model at {self.shown} did not finish its answer within {self.timeout_seconds:g} s "
                f"(llm_timeout_seconds; after {pieces} pieces)"
            ) from None
        except _TooManyBytes:
            raise ResourceExhausted(
                f"the model endpoint {self.shown} sent more than {self.max_wire_bytes:,} bytes: cut mid-stream "
                f"after {pieces} pieces"
            ) from None
        except _Broken as exc:
            raise self._mid_stream(str(exc), pieces) from None
        except httpx_sse.SSEError as exc:
            raise self._mid_stream(f"its events do not parse ({exc})", pieces) from None
        except httpx.HTTPError as exc:
            if not started and isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                raise DependencyUnavailable(
                    self._said(f"cannot reach the model endpoint {self.shown}: {_why(exc)}"),
                    metadata={"url": self.shown},
                ) from None
            if not started:
                raise DependencyUnavailable(
                    self._said(f"the model endpoint {self.shown} failed: {_why(exc)}"), metadata={"url": self.shown}
                ) from None
            raise self._mid_stream(f"the connection dropped ({_why(exc)})", pieces) from None

    async def _check(self, response: httpx.Response) -> None:
        """DependencyUnavailable unless ``response`` is a 200 streaming server-sent events, uncompressed."""
        if response.status_code != 200:
            body = bytearray()
            with contextlib.suppress(httpx.HTTPError, _TooManyBytes):
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) >= ERROR_BODY_BYTES:
                        break
            text = body[:ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
            raise DependencyUnavailable(
                self._said(f"the model endpoint {self.shown} answered HTTP {response.status_code}: {clip(text, 300)}"),
                metadata={"url": self.shown, "http_status": str(response.status_code)},
            )
        kind = response.headers.get("content-type", "").partition(";")[0].strip()
        if kind != "text/event-stream":
            raise DependencyUnavailable(
                self._said(
                    f"the model endpoint {self.shown} answered {kind or 'no content type'}, not text/event-stream"
                ),
                metadata={"url": self.shown},
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise DependencyUnavailable(
                self._said(f"the model endpoint {self.shown} compressed its stream ({encoding}) though asked not to"),
                metadata={"url": self.shown},
            )

    def _mid_stream(self, why: str, pieces: int) -> DependencyUnavailable:
        return DependencyUnavailable(
            self._said(f"the model endpoint {self.shown} failed mid-stream after {pieces} pieces: {why}"),
            metadata={"url": self.shown, "pieces": str(pieces), "mid_stream": "true"},
        )

    def _said(self, message: str) -> str:
        """``message`` with the API key blotted out, should the endpoint have echoed it."""
        return message.replace(self._key, _REDACTED) if self._key else message


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _content(data: str) -> str:
    """The text an event's JSON carries in ``choices[0].delta.content`` ("" for none); _Broken when it is not that."""
    try:
        message: Any = json.loads(data)
    except ValueError:
        raise _Broken(f"an event's data is not JSON: {echo(data, 80)}") from None
    if not isinstance(message, dict):
        raise _Broken(f"an event's data is not a JSON object: {echo(data, 80)}")
    if "error" in message:
        error = message["error"]
        said = error.get("message", error) if isinstance(error, dict) else error
        raise _Broken(f"it sent an error: {clip(str(said), 300)}")
    choices = message.get("choices")
    if not isinstance(choices, list):
        raise _Broken(f"an event has no choices list: {echo(data, 80)}")
    if not choices:  # a usage report, say
        return ""
    first = choices[0]
    delta = first.get("delta") if isinstance(first, dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    if content is None:  # the role, or the finish reason
        return ""
    if not isinstance(content, str):
        raise _Broken(f"an event's delta.content is not a string: {echo(data, 80)}")
    return content


def _why(exc: httpx.HTTPError) -> str:
    """An httpx error in a few words: what the socket said when it was refused, else its own message."""
    cause: BaseException | None = exc
    for _ in range(8):  # httpx's error, httpcore's, then the OSError of each address tried
        if cause is None:
            break
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip()
    return clip(text, 200) if text else type(exc).__name__
