"""A misbehaving OpenAI-compatible upstream for tests: a raw asyncio HTTP/1.1 server whose every
byte is scripted, so a test can send what a real server must never send (a malformed chunk, a
stream cut without ``[DONE]``, a reset, a keep-alive connection closed under a reused request).

``model`` in the request body picks the behaviour (``BEHAVIOURS``); the part after a ``:`` is an
argument. Each connection counts its requests, so a behaviour can act on the n-th one.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

PROVIDER_SECRET = "sk-upstream-secret-0123456789abcdef"


@dataclass
class Conn:
    writer: asyncio.StreamWriter
    served: int = 0  # requests answered on this connection before the current one
    log: list[str] = field(default_factory=list)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0), as a crashed peer or a load balancer does."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


def http_response(status: int, payload: Any, content_type: str = "application/json") -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return (f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            "connection: keep-alive\r\n\r\n").encode() + body


def completion(text: str = "the answer", usage: Any = None, model: str = "rogue") -> dict[str, Any]:
    return {"id": "chatcmpl-rogue", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage if usage is not None else {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}


def chunk(content: str | None = None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    choices = [] if usage is not None else [{"index": 0, "delta": {} if content is None else {"content": content},
                                             "finish_reason": finish}]
    out: dict[str, Any] = {"id": "chatcmpl-rogue", "object": "chat.completion.chunk", "created": 1,
                           "model": "rogue", "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def sse(*events: Any) -> bytes:
    """SSE data lines; a ``bytes`` event goes out as it is (a malformed line)."""
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
               b"connection: keep-alive\r\n\r\n")


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


GOOD_STREAM = [chunk("the"), chunk(" answer"), chunk(finish="stop"),
               chunk(usage={"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12})]

Behaviour = Callable[[Conn, dict[str, Any], str], Awaitable[bool]]  # returns: keep the connection open
BEHAVIOURS: dict[str, Behaviour] = {}


def behaviour(name: str) -> Callable[[Behaviour], Behaviour]:
    def register(fn: Behaviour) -> Behaviour:
        BEHAVIOURS[name] = fn
        return fn
    return register


async def _stream(conn: Conn, events: list[Any], end: str = "done") -> bool:
    """Stream ``events``; ``end``: "done" (``[DONE]`` and the terminating chunk), "close" (FIN
    without ``[DONE]``), "reset" (RST mid-stream)."""
    conn.send(STREAM_HEAD)
    for e in events:
        conn.send(chunked(sse(e)))
        await conn.writer.drain()
        await asyncio.sleep(0.01)
    if end == "done":
        conn.send(chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return True
    if end == "reset":
        conn.reset()
        return False
    conn.send(b"0\r\n\r\n")  # a complete HTTP body, but the SSE stream never said [DONE]
    return True


@behaviour("good")
async def _good(conn: Conn, body: dict[str, Any], arg: str) -> bool:
    if body.get("stream"):
        return await _stream(conn, GOOD_STREAM)
    conn.send(http_response(200, completion()))
    return True


@behaviour("malformed")
async def _malformed(conn: Conn, body: dict[str, Any], arg: str) -> bool:
    """``malformed:<what>`` or ``malformed:<what>@late`` (after one good chunk)."""
    what, _, when = arg.partition("@")
    bad: Any = {"list": [1, 2], "choices": {**chunk("x"), "choices": "oops"},
                "delta": {**chunk(), "choices": [{"index": 0, "delta": "oops", "finish_reason": None}]},
                "nonjson": b"{not json", "choice": {**chunk(), "choices": ["oops"]}}[what]
    events = [chunk("the"), bad, chunk(finish="stop")] if when == "late" else [bad, chunk(finish="stop")]
    return await _stream(conn, events)


@behaviour("cut")
async def _cut(conn: Conn, body: dict[str, Any], arg: str) -> bool:
    """``cut:close`` or ``cut:reset`` after "the"."""
    return await _stream(conn, [chunk("the")], end=arg)


@behaviour("status")
async def _status(conn: Conn, body: dict[str, Any], arg: str) -> bool:
    """``status:<code>``: an error that quotes the gateway's credentials back."""
    auth = conn.log[-1] if conn.log else ""
    message = (f"Incorrect API key provided: {auth}. Also seen: Bearer sk-live-abcdefghijklmnop1234 "
               f"and {PROVIDER_SECRET}")
    conn.send(http_response(int(arg), {"error": {"message": message, "type": "invalid_request_error",
                                                 "param": None, "code": "invalid_api_key"}}))
    return True


@behaviour("usage")
async def _usage(conn: Conn, body: dict[str, Any], arg: str) -> bool:
    """``usage:<json>``: a completion (or stream) that reports the given usage object."""
    usage = json.loads(arg)
    if body.get("stream"):
        return await _stream(conn, [chunk("the"), chunk(" answer"), chunk(finish="stop"), chunk(usage=usage)])
    conn.send(http_response(200, completion(usage=usage)))
    return True


@behaviour("stale")
async def _stale(conn: Conn, body: dict[str, Any], arg: str) -> bool:
    """Answers the first request of each connection; the second one finds the connection closed
    under it (as a server that drops idle keep-alive connections, or one that just failed)."""
    if conn.served >= 1:
        conn.reset() if arg == "reset" else conn.writer.close()
        return False
    return await _good(conn, body, "")


@behaviour("tools")
async def _tools(conn: Conn, body: dict[str, Any], arg: str) -> bool:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    payload = completion()
    payload["choices"][0] = {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                             "finish_reason": "tool_calls"}
    conn.send(http_response(200, payload))
    return True


class RogueUpstream:
    """Serve ``BEHAVIOURS`` on a free port from a background thread. ``requests`` records each
    request body; ``connections`` counts accepted connections."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopping = asyncio.Event()
        self._open: set[asyncio.Task[Any]] = set()  # the connections being served
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        """Serve until ``stop``, then close every connection while the loop still runs: a
        connection left to the garbage collector closes its writer on a closed loop."""
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in self._open:
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)
        await server.wait_closed()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> RogueUpstream:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        conn = Conn(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))) or b"{}")
                self.requests.append(body)
                self.authorizations.append(headers.get("authorization", ""))
                conn.log.append(headers.get("authorization", ""))
                name, _, arg = str(body.get("model", "good")).partition(":")
                keep = await BEHAVIOURS[name](conn, body, arg)
                await writer.drain()
                conn.served += 1
                if not keep:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._open.discard(task)
            if not writer.is_closing():
                writer.close()
