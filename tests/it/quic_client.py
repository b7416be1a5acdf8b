"""An MQTT-over-QUIC test client on aioquic's sans-I/O QuicConnection, driven by hand so that a
test can open several bidirectional streams, leave one unread, send garbage on one, or move
to another UDP port mid-session. Used by tests/it/quic.rs; prints one line per event it sees:

  READY                     subscriptions acknowledged, the test may publish
  SUBACK <label>            a SUBACK arrived on the stream called <label>
  PUBACK <label>            a PUBACK arrived on <label>
  MSG <label> <topic> <payload>
  RESET <label>             the broker reset <label>
  MIGRATED <port>           the client now sends from a new UDP port
  CLOSED <error code>       the broker closed the connection
  DONE                      the scenario completed

usage: quic_client.py PORT SCENARIO [COUNT]
"""

import os
import select
import socket
import ssl
import sys
import time

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

WAIT = 15.0


def say(*words):
    print(*words, flush=True)


def varint(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect(client_id, v5, keepalive=30):
    body = string("MQTT") + bytes([5 if v5 else 4, 0x02]) + keepalive.to_bytes(2, "big")
    if v5:
        body += b"\x00"
    return packet(0x10, body + string(client_id))


def subscribe(pid, topic, qos, v5):
    body = pid.to_bytes(2, "big") + (b"\x00" if v5 else b"") + string(topic) + bytes([qos])
    return packet(0x82, body)


def publish(topic, payload, qos, pid, v5):
    body = string(topic)
    if qos:
        body += pid.to_bytes(2, "big")
    if v5:
        body += b"\x00"
    return packet(0x30 | (qos << 1), body + payload)


def puback(pid):
    return packet(0x40, pid.to_bytes(2, "big"))


def parse_publish(first, body, v5):
    n = int.from_bytes(body[:2], "big")
    topic = body[2 : 2 + n].decode()
    at = 2 + n
    qos = (first >> 1) & 3
    pid = None
    if qos:
        pid = int.from_bytes(body[at : at + 2], "big")
        at += 2
    if v5:
        length, used = 0, 0
        while True:
            byte = body[at + used]
            length |= (byte & 0x7F) << (7 * used)
            used += 1
            if not byte & 0x80:
                break
        at += used + length
    return topic, qos, pid, bytes(body[at:])


def cut(buf):
    """The first whole packet of buf (removed from it), or None."""
    if len(buf) < 2:
        return None
    length, used = 0, 0
    while True:
        if 1 + used >= len(buf):
            return None
        byte = buf[1 + used]
        length |= (byte & 0x7F) << (7 * used)
        used += 1
        if not byte & 0x80:
            break
    end = 1 + used + length
    if len(buf) < end:
        return None
    first, body = buf[0], bytes(buf[1 + used : end])
    del buf[:end]
    return first, body


class StallingConnection(QuicConnection):
    """Never raises the receive window of the streams in `stalled`: their data stops at the
    initial window, as if the application had stopped reading them."""

    stalled = set()

    def _write_stream_limits(self, builder, space, stream):
        if stream.stream_id in self.stalled:
            return
        super()._write_stream_limits(builder, space, stream)


class Client:
    def __init__(self, port, stream_window=None):
        config = QuicConfiguration(is_client=True, alpn_protocols=["mqtt"])
        config.verify_mode = ssl.CERT_NONE
        if stream_window:
            config.max_stream_data = stream_window
        self.conn = StallingConnection(configuration=config)
        self.server = ("127.0.0.1", port)
        self.sock = self.new_socket()
        self.buffers = {}
        self.packets = []
        self.resets = []
        self.closed = None
        self.labels = {}
        self.conn.connect(self.server, now=time.time())
        self.flush()

    @staticmethod
    def new_socket():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    def flush(self):
        for data, addr in self.conn.datagrams_to_send(now=time.time()):
            self.sock.sendto(data, addr)

    def step(self, limit=0.05):
        timer = self.conn.get_timer()
        wait = limit if timer is None else max(0.0, min(limit, timer - time.time()))
        ready, _, _ = select.select([self.sock], [], [], wait)
        if ready:
            while True:
                try:
                    data, addr = self.sock.recvfrom(65536)
                except BlockingIOError:
                    break
                self.conn.receive_datagram(data, addr, now=time.time())
        timer = self.conn.get_timer()
        if timer is not None and timer <= time.time():
            self.conn.handle_timer(now=time.time())
        while True:
            event = self.conn.next_event()
            if event is None:
                break
            self.event(event)
        self.flush()

    def event(self, event):
        if isinstance(event, events.StreamDataReceived):
            buf = self.buffers.setdefault(event.stream_id, bytearray())
            buf += event.data
            while True:
                found = cut(buf)
                if found is None:
                    break
                self.packets.append((event.stream_id, found[0], found[1]))
        elif isinstance(event, events.StreamReset):
            self.resets.append(event.stream_id)
            say("RESET", self.label(event.stream_id))
        elif isinstance(event, events.ConnectionTerminated):
            self.closed = event.error_code
            say("CLOSED", event.error_code)

    def label(self, stream_id):
        return self.labels.get(stream_id, str(stream_id))

    def open(self, label, uni=False):
        sid = self.conn.get_next_available_stream_id(is_unidirectional=uni)
        self.labels[sid] = label
        return sid

    def send(self, sid, data, end=False):
        self.conn.send_stream_data(sid, data, end_stream=end)
        self.flush()

    def wait(self, kind, stream=None, limit=WAIT):
        """The next packet of type `kind` (on `stream` if given): (stream, first, body)."""
        deadline = time.time() + limit
        while time.time() < deadline:
            for i, (sid, first, body) in enumerate(self.packets):
                if first >> 4 == kind and (stream is None or sid == stream):
                    del self.packets[i]
                    return sid, first, body
            if self.closed is not None:
                raise SystemExit(f"connection closed while waiting for packet type {kind}")
            self.step()
        raise SystemExit(f"no packet of type {kind} within {limit}s")

    def migrate(self):
        old = self.sock
        self.sock = self.new_socket()
        old.close()
        self.conn.change_connection_id()
        self.flush()
        say("MIGRATED", self.sock.getsockname()[1])


def receive_messages(client, v5, count, ack=True):
    seen = 0
    while seen < count:
        sid, first, body = client.wait(3)
        topic, qos, pid, payload = parse_publish(first, body, v5)
        say("MSG", client.label(sid), topic, payload.decode(errors="replace"))
        if qos == 1 and ack:
            client.send(sid, puback(pid))
        seen += 1


def main():
    port = int(sys.argv[1])
    scenario = sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    v5 = scenario not in ("single", "stall-control")
    stalls = scenario in ("stall", "stall-control")
    client = Client(port, stream_window=32 * 1024 if stalls else None)
    if scenario == "no-stream":
        # The handshake only: no stream, no CONNECT.
        deadline = time.time() + 30
        while client.closed is None and time.time() < deadline:
            client.step()
        if client.conn._retry_count:
            say("RETRIED")
        certificate = client.conn.tls._peer_certificate
        if certificate is not None:
            say("SERIAL", certificate.serial_number)
        say("DONE" if client.closed is not None else "STILL-OPEN")
        return
    control = client.open("control")
    client.send(control, connect(f"aioquic-{scenario}-{os.getpid()}", v5))
    client.wait(2, control)

    if scenario in ("single", "migrate"):
        client.send(control, subscribe(1, "quic/in", 1, v5))
        sid, _, _ = client.wait(9, control)
        say("SUBACK", client.label(sid))
        say("READY")
        if scenario == "migrate":
            receive_messages(client, v5, 1)
            client.migrate()
            say("READY")
            receive_messages(client, v5, count)
        else:
            receive_messages(client, v5, count)
        client.send(control, publish("quic/out", b"from-aioquic", 1, 7, v5))
        sid, _, _ = client.wait(4)
        say("PUBACK", client.label(sid))

    elif scenario in ("multi", "stall"):
        # aioquic hands out the same id until something is sent on it.
        a = client.open("A")
        if scenario == "stall":
            StallingConnection.stalled = {a}
        client.send(a, subscribe(1, "multi/a", 1, v5))
        b = client.open("B")
        client.send(b, subscribe(2, "multi/b", 1, v5))
        for _ in range(2):
            sid, _, _ = client.wait(9)
            say("SUBACK", client.label(sid))
        if scenario == "multi":
            client.send(b, publish("multi/echo", b"on-b", 1, 11, v5))
            sid, _, _ = client.wait(4)
            say("PUBACK", client.label(sid))
            uni = client.open("uni", uni=True)
            client.send(uni, publish("multi/echo", b"on-uni", 1, 12, v5), end=True)
            sid, _, _ = client.wait(4)
            say("PUBACK", client.label(sid))
        say("READY")
        receive_messages(client, v5, count)

    elif scenario == "stall-control":
        # Never raise the control stream's window: the client stops reading everything.
        StallingConnection.stalled = {control}
        client.send(control, subscribe(1, "flood/#", 0, v5))
        sid, _, _ = client.wait(9, control)
        say("SUBACK", client.label(sid))
        say("READY")
        deadline = time.time() + 60
        while client.closed is None and time.time() < deadline:
            client.step()
        if client.closed is None:
            raise SystemExit("the broker kept a client that reads nothing")

    elif scenario == "malformed":
        b = client.open("B")
        client.send(b, subscribe(2, "bad/b", 1, v5))
        sid, _, _ = client.wait(9, b)
        say("SUBACK", client.label(sid))
        # A SUBSCRIBE with a reserved flag pattern: malformed.
        a = client.open("A")
        client.send(a, packet(0x80, b"\x00\x01\x00" + string("bad/a") + b"\x01"))
        deadline = time.time() + WAIT
        while a not in client.resets and time.time() < deadline:
            client.step()
        if a not in client.resets:
            raise SystemExit("stream A was not reset")
        say("READY")
        receive_messages(client, v5, count)
        # Garbage on the control stream ends the connection.
        client.send(control, b"\x00\x00")
        deadline = time.time() + WAIT
        while client.closed is None and time.time() < deadline:
            client.step()
            for sid, first, _ in client.packets:
                if first >> 4 == 14:
                    say("DISCONNECT", client.label(sid))
            client.packets.clear()
        if client.closed is None:
            raise SystemExit("the connection stayed open after garbage on the control stream")
    say("DONE")


if __name__ == "__main__":
    main()
