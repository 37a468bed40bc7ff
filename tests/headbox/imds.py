"""A small IMDSv2 for one box machine: `python -m tests.headbox.imds INSTANCE_ID AZ LIFE_CYCLE`.

Serves what the bundle's start commands read, the way EC2's metadata service answers an
instance launched with `HttpTokens: required`:

- `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1..21600) gives a
  session token;
- `GET /latest/meta-data/{instance-id, placement/availability-zone, instance-life-cycle,
  local-ipv4}` with a valid `X-aws-ec2-metadata-token` gives the value;
- a GET without a token (an IMDSv1 call) is 401 Unauthorized, an unknown path 404.

It binds 169.254.169.254:80 inside the machine's network namespace (root), logs each request
on stderr and prints "ready" on stdout once it listens.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL_S = 21_600


class _Metadata(BaseHTTPRequestHandler):
    server: _MetadataServer

    def do_PUT(self) -> None:
        if self.path != "/latest/api/token":
            self._answer(404, "Not Found")
            return
        try:
            ttl = int(self.headers.get(TOKEN_TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TTL_S:
            self._answer(400, "Bad Request")
            return
        token = secrets.token_urlsafe(32)
        self.server.tokens[token] = time.monotonic() + ttl
        self._answer(200, token)

    def do_GET(self) -> None:
        expires = self.server.tokens.get(self.headers.get(TOKEN_HEADER, ""))
        if expires is None or expires < time.monotonic():
            self._answer(401, "Unauthorized")
            return
        value = self.server.values.get(self.path)
        if value is None:
            self._answer(404, "Not Found")
            return
        self._answer(200, value)

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"imds: {format % args}\n")


class _MetadataServer(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], values: dict[str, str]) -> None:
        super().__init__(address, _Metadata)
        self.values = values
        self.tokens: dict[str, float] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("instance_id")
    parser.add_argument("availability_zone")
    parser.add_argument("life_cycle", choices=["spot", "on-demand"])
    parser.add_argument("--local-ipv4", default="")
    parser.add_argument("--bind", default="169.254.169.254")
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args()
    prefix = "/latest/meta-data/"
    values = {
        prefix + "instance-id": args.instance_id,
        prefix + "placement/availability-zone": args.availability_zone,
        prefix + "instance-life-cycle": args.life_cycle,
        prefix + "local-ipv4": args.local_ipv4,
    }
    server = _MetadataServer((args.bind, args.port), values)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
