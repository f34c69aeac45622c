"""The agent server's listen backlog holds a trainer's burst of connections.

socketserver's default backlog (5) let Linux drop the SYNs past the accept queue while the
server was busy, and with SYN cookies reset a connection after its request was sent: the
64-client load test (tests/e2e/test_vllm_real.py) failed that way once."""

from __future__ import annotations

import socket
import sys

import pytest

from deep_math.serving.http import AgentServer

BURST = 64


@pytest.mark.skipif(sys.platform != "linux", reason="the accept-queue behaviour checked is Linux's")
def test_a_burst_of_connections_completes_while_nobody_accepts():
    server = AgentServer(service=None, host="127.0.0.1", port=0)  # listening, not accepting yet
    port = server.server_address[1]
    clients = []
    try:
        for _ in range(BURST):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(0.5)
            clients.append(sock)
            # With a backlog of 5 the kernel drops the SYNs past the 6th: connect times out here.
            sock.connect(("127.0.0.1", port))
    finally:
        for sock in clients:
            sock.close()
        server.server_close()
    assert len(clients) == BURST
