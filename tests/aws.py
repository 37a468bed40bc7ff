"""A moto server on a free local port, spoken to over real HTTP."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3

REGION = "us-west-2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server with nothing in it.

    moto keeps its state per process, not per server: every server starts from a reset,
    so that suites cannot see each other's queues, tables or instances.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=10).close()
        yield endpoint
    finally:
        server.stop()


class Aws:
    """boto3 clients bound to one moto server."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.session = boto3.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.endpoint)

    def resource(self, service: str) -> Any:
        return self.session.resource(service, endpoint_url=self.endpoint)
