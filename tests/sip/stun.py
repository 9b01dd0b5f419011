"""A minimal STUN server on 127.0.0.1 for the NAT tests: it answers every Binding request with
the address a NAT would have mapped the client to (a chosen IP, the client's own port), in
both the classic MAPPED-ADDRESS and RFC 5389's XOR-MAPPED-ADDRESS, and records who asked."""

from __future__ import annotations

import socket
import struct
import threading

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_RESPONSE = 0x0101


class StunServer:
    def __init__(self, mapped_ip: str) -> None:
        self.mapped_ip = mapped_ip
        self.requests: list[tuple[str, int]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stun", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> StunServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(2.0)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                data, peer = self._sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 20 or struct.unpack("!H", data[:2])[0] != BINDING_REQUEST:
                continue
            self.requests.append(peer)
            self._sock.sendto(self.response(data[4:20], peer[1]), peer)

    def response(self, cookie_and_id: bytes, port: int) -> bytes:
        ip = socket.inet_aton(self.mapped_ip)
        attrs = struct.pack("!HHBBH", 0x0001, 8, 0, 1, port) + ip
        if struct.unpack("!I", cookie_and_id[:4])[0] == MAGIC_COOKIE:
            xip = struct.pack("!I", struct.unpack("!I", ip)[0] ^ MAGIC_COOKIE)
            attrs += struct.pack("!HHBBH", 0x0020, 8, 0, 1, port ^ (MAGIC_COOKIE >> 16)) + xip
        return struct.pack("!HH", BINDING_RESPONSE, len(attrs)) + cookie_and_id + attrs
