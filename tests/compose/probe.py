#!/usr/bin/env python3
"""Probes of the composed stack from the host, with Python's standard library only.

  probe.py stun HOST PORT          one STUN Binding Request over UDP (RFC 5389); exits 0
                                   on a Binding Success Response with the magic cookie, our
                                   transaction id and a XOR-MAPPED-ADDRESS
  probe.py ws-close URL SECONDS    opens a WebSocket, prints "connected", then waits up to
                                   SECONDS for the server to close it and prints
                                   "close CODE" (or "eof" / "timeout" without a close frame)
"""

import base64
import os
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020


def fail(message):
    print(f"probe: {message}", file=sys.stderr)
    sys.exit(1)


def stun(host, port):
    transaction = os.urandom(12)
    request = struct.pack("!HHI", BINDING_REQUEST, 0, MAGIC_COOKIE) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        # UDP may drop the first datagram while the port forwarding warms up: 5 tries.
        for _ in range(5):
            sock.sendto(request, (host, port))
            try:
                data, _ = sock.recvfrom(2048)
            except socket.timeout:
                continue
            break
        else:
            fail(f"no STUN response from {host}:{port}/udp within 5 tries of 2 s")
    if len(data) < 20:
        fail(f"STUN response of {len(data)} bytes, shorter than a header")
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if kind != BINDING_SUCCESS:
        fail(f"STUN message type 0x{kind:04x}, expected Binding Success 0x0101")
    if cookie != MAGIC_COOKIE:
        fail(f"STUN magic cookie 0x{cookie:08x}, expected 0x{MAGIC_COOKIE:08x}")
    if data[8:20] != transaction:
        fail("STUN response carries another transaction id than the request")
    if length != len(data) - 20:
        fail(f"STUN length field {length} does not match the {len(data) - 20} bytes received")
    offset = 20
    while offset + 4 <= len(data):
        attr, size = struct.unpack("!HH", data[offset:offset + 4])
        value = data[offset + 4:offset + 4 + size]
        if attr == XOR_MAPPED_ADDRESS and len(value) >= 8 and value[1] == 0x01:
            mapped_port = struct.unpack("!H", value[2:4])[0] ^ (MAGIC_COOKIE >> 16)
            mapped_ip = struct.unpack("!I", value[4:8])[0] ^ MAGIC_COOKIE
            print(f"binding success: mapped address {socket.inet_ntoa(struct.pack('!I', mapped_ip))}:{mapped_port}")
            return
        offset += 4 + (size + 3) // 4 * 4
    fail("STUN Binding Success without an IPv4 XOR-MAPPED-ADDRESS")


def read_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def ws_close(url, seconds):
    parts = urlsplit(url)
    if parts.scheme != "ws":
        fail(f"only ws:// URLs, got {url}")
    port = parts.port or 80
    key = base64.b64encode(os.urandom(16)).decode()
    sock = socket.create_connection((parts.hostname, port), timeout=10)
    sock.sendall(
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1024)
        if not chunk:
            fail("connection closed during the WebSocket handshake")
        head += chunk
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 101 " not in status + " ":
        fail(f"WebSocket handshake answered {status!r}")
    pending = head.split(b"\r\n\r\n", 1)[1]
    print("connected", flush=True)

    # Server frames are unmasked: FIN/opcode, length (7, 16 or 64 bit), payload.
    class Reader:
        def __init__(self):
            self.buffer = pending

        def take(self, count):
            while len(self.buffer) < count:
                chunk = sock.recv(4096)
                if not chunk:
                    raise EOFError
                self.buffer += chunk
            data, self.buffer = self.buffer[:count], self.buffer[count:]
            return data

    reader = Reader()
    deadline = time.monotonic() + seconds
    try:
        while True:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            first, second = reader.take(2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                size = struct.unpack("!H", reader.take(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", reader.take(8))[0]
            payload = reader.take(size)
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                print(f"close {code}", flush=True)
                print(f"at {time.time():.3f}", file=sys.stderr, flush=True)
                # Answer like a browser does: a masked close frame echoing the code.
                mask = os.urandom(4)
                body = payload[:2]
                sock.sendall(bytes([0x88, 0x80 | len(body)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
                return
            # Pings (0x9) need no answer within the test's short wait; skip other frames.
    except EOFError:
        print("eof", flush=True)
    except socket.timeout:
        print("timeout", flush=True)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "stun":
        stun(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "ws-close":
        ws_close(sys.argv[2], float(sys.argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
