"""The fault proxy itself: what each fault does to the caller and to the upstream, the
share of calls it breaks, its seeded draws and its counters."""

from __future__ import annotations

import httpx
from aiohttp import web

from services.platform.devstack import free_port
from services.platform.fakes.faultproxy import KINDS, FaultProxy, Route


async def _upstream() -> tuple[web.AppRunner, int, list]:
    seen: list = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.path_qs, await request.read()))
        return web.json_response({"ok": True}, status=201)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port, seen


async def _through(kinds: tuple[str, ...], rate: float, calls: int, seed: int = 1):
    runner, port, seen = await _upstream()
    proxy = FaultProxy(
        [Route("svc", free_port(), f"http://127.0.0.1:{port}")],
        rate=rate,
        seed=seed,
        max_delay_s=0.05,
        kinds=kinds,
    )
    control = free_port()
    await proxy.start(control_port=control)
    outcomes = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy.routes[0].port}") as c:
            for i in range(calls):
                try:
                    r = await c.post(f"/things?i={i}", content=b"body")
                    outcomes.append(r.status_code)
                except httpx.TransportError:
                    outcomes.append("cut")
        async with httpx.AsyncClient() as c:
            stats = (await c.get(f"http://127.0.0.1:{control}/_faults")).json()
    finally:
        await proxy.stop()
        await runner.cleanup()
    return outcomes, seen, stats


async def test_at_rate_zero_every_call_passes_through_unchanged():
    outcomes, seen, stats = await _through(KINDS, 0.0, 10)
    assert outcomes == [201] * 10
    assert [s[1] for s in seen] == [f"/things?i={i}" for i in range(10)]
    assert all(s[2] == b"body" for s in seen)
    assert (stats["total_calls"], stats["total_faults"]) == (10, 0)


async def test_each_fault_does_what_it_says_to_caller_and_upstream():
    expected = {
        "reset": ("cut", 0),
        "bad_gateway": (502, 0),
        "lost_reset": ("cut", 5),
        "lost_502": (502, 5),
        "delay": (201, 5),
    }
    for kind, (caller_sees, upstream_got) in expected.items():
        outcomes, seen, stats = await _through((kind,), 1.0, 5)
        assert outcomes == [caller_sees] * 5, kind
        assert len(seen) == upstream_got, kind  # the lost_* ones reached the upstream
        assert stats["by_kind"] == {kind: 5}


async def test_the_share_is_near_the_rate_and_the_draws_are_seeded():
    first, _, stats = await _through(KINDS, 0.3, 200, seed=7)
    again, _, _ = await _through(KINDS, 0.3, 200, seed=7)
    assert first == again  # same seed, same calls: the same faults
    assert 40 <= stats["total_faults"] <= 80  # 30% of 200, give or take
    assert sum(stats["by_kind"].values()) == stats["total_faults"]
