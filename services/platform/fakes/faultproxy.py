"""A fault-injecting HTTP proxy, run as its own process between a caller and a peer.

Each route listens on a port and forwards to one upstream (a service, the payment
provider). A seeded share of the calls (`--rate`, e.g. 0.3) goes wrong in one of these
ways, chosen evenly:

* `reset`: the connection is cut before the request is forwarded (the peer saw nothing);
* `bad_gateway`: 502 without forwarding (the peer saw nothing);
* `lost_reset`: forwarded, the peer answered, then the connection is cut (the peer's
  change is committed but the caller never learns it: the case idempotency must survive);
* `lost_502`: forwarded, the peer answered, and the caller gets a 502 instead;
* `delay`: held for a while (`--max-delay-s`), then forwarded normally;
* `late` (only with `--late-s`): forwarded, and the peer's answer held back that long,
  past the caller's read timeout: the caller times out after the peer committed.

Every decision and every call is counted per route and kind. A control port serves
`GET /_faults` (the counts) and `POST /_faults` with `{"rate": ...}` (0 heals the proxy).

    python -m services.platform.fakes.faultproxy --control-port 9000 --seed 7 --rate 0.3 \
        --route orders=9001=http://127.0.0.1:8102 --route payments=9002=http://127.0.0.1:8420
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

from services.common.http import HOP_BY_HOP

KINDS = ("reset", "bad_gateway", "lost_reset", "lost_502", "delay")
LATE = "late"


@dataclass
class Route:
    name: str
    port: int
    upstream: str


@dataclass
class FaultProxy:
    routes: list[Route]
    rate: float = 0.3
    seed: int = 0
    max_delay_s: float = 0.5
    late_s: float = 0.0
    kinds: tuple[str, ...] = KINDS
    calls: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        if self.late_s > 0 and LATE not in self.kinds:
            self.kinds = (*self.kinds, LATE)
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []

    def decide(self, route: str) -> str | None:
        """One seeded draw per call: None (pass through) or the fault to inject."""
        self.calls[route] += 1
        if self._random.random() >= self.rate:
            return None
        kind = self._random.choice(self.kinds)
        self.faults[f"{route}:{kind}"] += 1
        return kind

    def stats(self) -> dict:
        by_kind: Counter = Counter()
        for key, n in self.faults.items():
            by_kind[key.split(":", 1)[1]] += n
        return {
            "rate": self.rate,
            "seed": self.seed,
            "calls": dict(self.calls),
            "faults": dict(self.faults),
            "by_kind": dict(by_kind),
            "total_calls": sum(self.calls.values()),
            "total_faults": sum(self.faults.values()),
        }

    async def _forward(self, route: Route, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        url = URL(route.upstream.rstrip("/") + request.raw_path, encoded=True)
        async with self._session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as resp:
            payload = await resp.read()
            out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=resp.status, headers=out_headers, body=payload)

    def _handler(self, route: Route):
        async def handle(request: web.Request) -> web.StreamResponse:
            kind = self.decide(route.name)
            if kind == "reset":
                return _cut(request)
            if kind == "bad_gateway":
                return _bad_gateway()
            if kind == "delay":
                await asyncio.sleep(self._random.uniform(0.05, self.max_delay_s))
            try:
                answer = await self._forward(route, request)
            except (aiohttp.ClientError, TimeoutError):
                return _bad_gateway()
            if kind == "lost_reset":
                return _cut(request)
            if kind == "lost_502":
                return _bad_gateway()
            if kind == LATE:
                await asyncio.sleep(self.late_s)
            return answer

        return handle

    def _control(self) -> web.Application:
        app = web.Application()

        async def get(_: web.Request) -> web.Response:
            return web.json_response(self.stats())

        async def post(request: web.Request) -> web.Response:
            body = await request.json()
            if "rate" in body:
                self.rate = float(body["rate"])
            return web.json_response(self.stats())

        app.router.add_get("/_faults", get)
        app.router.add_post("/_faults", post)
        return app

    async def start(self, host: str = "127.0.0.1", control_port: int | None = None) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=60),
            connector=aiohttp.TCPConnector(limit=200),
        )
        apps = [(r.port, self._route_app(r)) for r in self.routes]
        if control_port is not None:
            apps.append((control_port, self._control()))
        for port, app in apps:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            self._runners.append(runner)

    def _route_app(self, route: Route) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handler(route))
        return app

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _cut(request: web.Request) -> web.StreamResponse:
    """Drop the connection without an answer, as a crashed peer or a broken network does."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=502)  # never reaches the caller: the connection is gone


def _bad_gateway() -> web.Response:
    return web.Response(
        status=502,
        text="fault injected",
        headers={"content-type": "text/plain", "connection": "close"},
    )


def parse_route(spec: str) -> Route:
    name, port, upstream = spec.split("=", 2)
    return Route(name=name, port=int(port), upstream=upstream)


def main() -> None:
    parser = argparse.ArgumentParser(description="fault-injecting HTTP proxy")
    parser.add_argument("--route", action="append", required=True, help="name=port=upstream")
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay-s", type=float, default=0.5)
    parser.add_argument("--late-s", type=float, default=0.0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    proxy = FaultProxy(
        routes=[parse_route(r) for r in args.route],
        rate=args.rate,
        seed=args.seed,
        max_delay_s=args.max_delay_s,
        late_s=args.late_s,
    )

    async def run() -> None:
        await proxy.start(args.host, args.control_port)
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
