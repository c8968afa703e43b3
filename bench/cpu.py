"""CPU milliseconds per order, per platform process: where a placed (and paid) order's
cost goes, measured from /proc over a fixed closed loop, so it is steady where
throughput on a shared machine is not.

    .venv/bin/python -m bench.cpu            # place and pay, 64 shoppers x 10 orders, 2 rounds
    .venv/bin/python -m bench.cpu --no-pay   # placement only

Each round prints the orders per second and, per process (the worker with its task
processes), the CPU time it spent divided by the orders of the round. PostgreSQL's own
CPU is not included (it is shared with whatever else runs on the server).
"""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg
import typer

from bench.run import Bench, Driver

app = typer.Typer(add_completion=False)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        total = 0
        try:
            children = open(f"/proc/{pid}/task/{pid}/children").read().split()
        except OSError:
            children = []
        for p in [pid, *map(int, children)]:
            try:
                fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        out[name] = total / tick
    return out


async def measure(shoppers: int, per_shopper: int, rounds: int, pay: bool) -> None:
    bench = Bench(quick=True)
    bench.start()
    try:
        conn = await asyncpg.connect(bench.dsn)
        try:
            leaders = await bench.make_leaders(conn, 10)
            _, deals = await bench.setup_day(conn, 8, 10_000_000, limit=1_000_000)
            tokens = await bench.make_shoppers(conn, shoppers, leaders)
        finally:
            await conn.close()
        pids = {n: p.pid for n, p in bench.platform.supervisor.procs.items()}
        async with Driver(bench.base, connections=shoppers + 10, timeout=60) as http:

            async def shopper(i: int, token: str) -> None:
                h = {"authorization": f"Bearer {token}"}
                for k in range(per_shopper):
                    item = {"deal_id": deals[(i + k) % len(deals)], "quantity": 1}
                    r = await http.post("/orders", headers=h, json={"items": [item]})
                    assert r.status_code == 201, r.content
                    if pay:
                        r = await http.post(
                            f"/orders/{r.json()['id']}/pay",
                            headers=h,
                            json={"payment_method": "pm_card_visa"},
                        )
                        assert r.status_code == 200, r.content

            await asyncio.gather(*(shopper(i, t) for i, t in enumerate(tokens[:8])))  # warm
            for _ in range(rounds):
                before, t0 = cpu_seconds(pids), time.perf_counter()
                await asyncio.gather(*(shopper(i, t) for i, t in enumerate(tokens)))
                elapsed = time.perf_counter() - t0
                await asyncio.sleep(2)  # the events of the round are applied
                after = cpu_seconds(pids)
                n = shoppers * per_shopper
                ms = {k: (after[k] - before[k]) * 1000 / n for k in after}
                parts = ", ".join(
                    f"{k} {v:.2f}" for k, v in sorted(ms.items(), key=lambda x: -x[1])
                )
                print(
                    f"{n} orders{' placed and paid' if pay else ' placed'} in {elapsed:.1f} s "
                    f"({n / elapsed:.1f}/s); CPU ms per order: {parts}; "
                    f"total {sum(ms.values()):.2f}",
                    flush=True,
                )
    finally:
        bench.stop()


@app.command()
def main(
    shoppers: int = typer.Option(64),
    orders: int = typer.Option(10, help="orders per shopper per round"),
    rounds: int = typer.Option(2),
    pay: bool = typer.Option(True, help="also pay for each order"),
) -> None:
    asyncio.run(measure(shoppers, orders, rounds, pay))


if __name__ == "__main__":
    app()
