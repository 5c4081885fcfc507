#!/usr/bin/env python3
"""Probes of the composed stack from the host, with Python's standard library only.

  probe.py stun HOST PORT          one STUN Binding Request over UDP (RFC 5389); exits 0
                                   on a Binding Success Response with the magic cookie, our
                                   transaction id and a XOR-MAPPED-ADDRESS
  probe.py ws-close URL SECONDS    opens a WebSocket, prints "connected", then waits up to
                                   SECONDS for the server to close it and prints
                                   "close CODE" (or "eof" / "timeout" without a close frame)
  probe.py cluster-view STATS1 STATS2
                                   waits (up to 30 s) until both replicas' /stats.json say
                                   cluster.busUp and list both replicas' instance ids
  probe.py cluster-swarm WS STATS1 STATS2
                                   opens WebSockets at WS (the load balancer) until one is
                                   on each replica (told by their /stats.json connections),
                                   announces one swarm from both, and checks across the
                                   replicas: the second announce counts 2 peers, its offer
                                   reaches the first client, whose answer comes back
"""

import base64
import json
import os
import socket
import struct
import sys
import time
from urllib.parse import urlsplit
from urllib.request import urlopen

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


def get_json(url):
    with urlopen(url, timeout=5) as response:
        return json.load(response)


def cluster_view(stats_urls):
    deadline = time.monotonic() + 30
    while True:
        views = []
        try:
            views = [get_json(url).get("cluster") or {} for url in stats_urls]
        except OSError as error:
            views = [{"error": str(error)}]
        ids = {view.get("instance") for view in views}
        if (len(views) == len(stats_urls) and None not in ids and len(ids) == len(views)
                and all(view.get("busUp") is True and set(view.get("instances", [])) == ids for view in views)):
            for url, view in zip(stats_urls, views):
                print(f"{url}: instance {view['instance']}, busUp, instances {sorted(view['instances'])}")
            return
        if time.monotonic() > deadline:
            fail(f"within 30 s the replicas did not all see each other with the bus up: {json.dumps(views)}")
        time.sleep(0.5)


class WebSocket:
    """A minimal client: text frames out (masked), text frames in; pings answered."""

    def __init__(self, url):
        parts = urlsplit(url)
        if parts.scheme != "ws":
            fail(f"only ws:// URLs, got {url}")
        port = parts.port or 80
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock = socket.create_connection((parts.hostname, port), timeout=10)
        self.sock.sendall(
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1024)
            if not chunk:
                fail("connection closed during the WebSocket handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in status + " ":
            fail(f"WebSocket handshake answered {status!r}")
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    def _frame(self, opcode, payload):
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = bytes([0x80 | opcode, 0x80 | size])
        elif size < 65536:
            head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", size)
        else:
            head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", size)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send(self, message):
        self._frame(0x1, json.dumps(message).encode())

    def _take(self, count):
        while len(self.buffer) < count:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_frame(self):
        """The next frame as (opcode, payload). Server frames are unmasked: FIN/opcode,
        length (7, 16 or 64 bit), payload. Raises EOFError or socket.timeout."""
        first, second = self._take(2)
        opcode, size = first & 0x0F, second & 0x7F
        if size == 126:
            size = struct.unpack("!H", self._take(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self._take(8))[0]
        return opcode, self._take(size)

    def receive(self, what, seconds=10):
        """The next JSON text message; fails after SECONDS or on close."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.sock.settimeout(max(0.1, deadline - time.monotonic()))
                opcode, payload = self.read_frame()
                if opcode == 0x1:
                    return json.loads(payload)
                if opcode == 0x8:
                    fail(f"the server closed the socket while waiting for {what}")
                if opcode == 0x9:
                    self._frame(0xA, payload)
        except (socket.timeout, EOFError):
            fail(f"no {what} within {seconds} s")


def ws_close(url, seconds):
    ws = WebSocket(url)
    print("connected", flush=True)
    deadline = time.monotonic() + seconds
    try:
        while True:
            ws.sock.settimeout(max(0.1, deadline - time.monotonic()))
            opcode, payload = ws.read_frame()
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                print(f"close {code}", flush=True)
                print(f"at {time.time():.3f}", file=sys.stderr, flush=True)
                # Answer like a browser does: a masked close frame echoing the code.
                ws._frame(0x8, payload[:2])
                return
            # Pings (0x9) need no answer within the test's short wait; skip other frames.
    except EOFError:
        print("eof", flush=True)
    except socket.timeout:
        print("timeout", flush=True)


def cluster_swarm(ws_url, stats_urls):
    def counts():
        return [get_json(url)["connections"] for url in stats_urls]

    # least_conn alternates new sockets between replicas with equal counts; open sockets one
    # by one and see which replica's count went up, until one is on each.
    on = {}
    sockets = []
    for _ in range(6):
        before = counts()
        ws = WebSocket(ws_url)
        sockets.append(ws)
        deadline = time.monotonic() + 5
        while True:
            after = counts()
            grown = [i for i in range(len(stats_urls)) if after[i] > before[i]]
            if len(grown) == 1:
                break
            if time.monotonic() > deadline:
                fail(f"cannot tell which replica took the socket: connections {before} -> {after}")
            time.sleep(0.1)
        on.setdefault(grown[0], ws)
        if len(on) == len(stats_urls):
            break
    else:
        fail(f"6 sockets through {ws_url} did not reach both replicas (connections {counts()})")
    print(f"{len(sockets)} sockets through the load balancer, connections per replica {counts()}")

    info_hash = os.urandom(20).decode("latin-1")
    peer_a, peer_b = "-PR0001-" + "a" * 12, "-PR0001-" + "b" * 12
    first, second = on[0], on[1]
    announce = {"action": "announce", "info_hash": info_hash, "numwant": 5, "uploaded": 0,
                "downloaded": 0, "left": 1000, "event": "started"}
    first.send({**announce, "peer_id": peer_a, "offers": []})
    reply = first.receive("the first announce's response")
    if reply.get("interval") is None:
        fail(f"the first announce got {reply}")
    offer = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}
    second.send({**announce, "peer_id": peer_b,
                 "offers": [{"offer_id": "o" * 20, "offer": offer}]})
    reply = second.receive("the second announce's response")
    peers = (reply.get("complete") or 0) + (reply.get("incomplete") or 0)
    if peers != 2:
        fail(f"the announce on replica 2 counts {peers} peers in the swarm, expected 2 (one per replica): {reply}")
    print(f"announce on replica 2: complete {reply.get('complete')}, incomplete {reply.get('incomplete')}")
    relayed = first.receive("the offer from the client on the other replica")
    if relayed.get("offer") != offer or relayed.get("peer_id") != peer_b or relayed.get("offer_id") != "o" * 20:
        fail(f"replica 1's client got {relayed}, expected the offer of {peer_b}")
    print("the offer from replica 2's client reached replica 1's client")
    answer = {"type": "answer", "sdp": "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\n"}
    first.send({"action": "announce", "info_hash": info_hash, "peer_id": peer_a, "to_peer_id": peer_b,
                "offer_id": "o" * 20, "answer": answer})
    while True:
        back = second.receive("the answer from the client on the other replica")
        if "answer" in back:
            break
    if back.get("answer") != answer or back.get("peer_id") != peer_a or back.get("offer_id") != "o" * 20:
        fail(f"replica 2's client got {back}, expected the answer of {peer_a}")
    print("the answer from replica 1's client came back to replica 2's client")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "stun":
        stun(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "ws-close":
        ws_close(sys.argv[2], float(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "cluster-view":
        cluster_view(sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "cluster-swarm":
        cluster_swarm(sys.argv[2], sys.argv[3:])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
