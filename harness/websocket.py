"""A minimal WebSocket client (RFC 6455), standard library only: what a browser does to talk
to a Jupyter kernel (text frames, masked as a client must; ping answered, fragments joined).
Plain ``ws://`` to loopback is all the tests need."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import urllib.parse

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


class WebSocketError(RuntimeError):
    """The handshake was refused, or the connection closed."""


class WebSocket:
    """One client connection: ``send(text)``, ``recv() -> text``, ``close()``."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 30):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws":
            raise WebSocketError(f"only ws:// is supported: {url}")
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout)
        self._buffer = b""
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._handshake(parts.netloc, path, headers or {})

    def _handshake(self, host: str, path: str, headers: dict[str, str]) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += self._read_some()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status, *fields = head.decode(errors="replace").split("\r\n")
        if " 101 " not in f"{status} ":
            raise WebSocketError(f"handshake refused: {status}")
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        answered = {f.split(":", 1)[0].strip().lower(): f.split(":", 1)[1].strip() for f in fields}
        if answered.get("sec-websocket-accept") != accept:
            raise WebSocketError("handshake: wrong Sec-WebSocket-Accept")

    def _read_some(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise WebSocketError("connection closed")
        return data

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._buffer += self._read_some()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        size = len(payload)
        if size < 126:
            header += bytes([0x80 | size])
        elif size < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", size)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", size)
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _recv_frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read_exactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._read_exactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._read_exactly(8))
        mask = self._read_exactly(4) if second & 0x80 else b""
        payload = self._read_exactly(size)
        if mask:
            payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        return bool(first & 0x80), first & 0x0F, payload

    def send(self, text: str) -> None:
        self._send_frame(TEXT, text.encode())

    def recv(self) -> str:
        """The next text (or binary, decoded) message; pings are answered on the way."""
        message = b""
        while True:
            final, opcode, payload = self._recv_frame()
            if opcode == PING:
                self._send_frame(PONG, payload)
                continue
            if opcode == PONG:
                continue
            if opcode == CLOSE:
                raise WebSocketError(
                    f"closed by the server: {payload[2:].decode(errors='replace')}"
                )
            message += payload
            if final:
                return message.decode(errors="replace")

    def settimeout(self, seconds: float) -> None:
        self.sock.settimeout(seconds)

    def close(self) -> None:
        try:
            self._send_frame(CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()
