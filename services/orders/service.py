"""Group-order rules: placing, paying, the cutoff, delivery, pickup and refunds.

Every change of an order's status goes through `transition`, one conditional UPDATE
(`... WHERE status IN (<allowed from>)`), so two racing requests can never both move
the same order, and nothing reads a status and writes it back.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select

from services.common.auth import Principal
from services.common.background import after_response
from services.common.clock import clock
from services.common.errors import Conflict, Forbidden, NotFound, PeerTimeout, PeerUnavailable
from services.common.events import emit, kick, outbox_rows_sql
from services.common.http import ServiceClient
from services.common.payments import PaymentDeclined, ProviderRejected, get_provider
from services.common.settings import get_settings

from .models import AfterSalesRequest, GroupOrder, OrderLine, OrderStatus
from .rules import after_sales_open, reservation_expiry, threshold_met

log = structlog.get_logger()
SCHEMA = "orders"
catalog_client = ServiceClient("catalog")
leaders_client = ServiceClient("leaders")
# a peer call whose outcome is unknown (connection cut, answer lost) is asked again this
# many times when the peer makes it idempotent
PEER_RETRIES = 3

S = OrderStatus
# The lifecycle (DOMAIN.md "Group orders"): target status -> statuses it may come from.
TRANSITIONS: dict[OrderStatus, tuple[OrderStatus, ...]] = {
    S.paid: (S.pending_payment,),
    S.confirmed: (S.paid,),
    S.ready_for_pickup: (S.confirmed,),
    S.picked_up: (S.ready_for_pickup,),
    S.completed: (S.picked_up,),
    S.cancelled: (S.pending_payment, S.paid),
}
_STAMP = {
    S.paid: "paid_at",
    S.confirmed: "confirmed_at",
    S.ready_for_pickup: "ready_at",
    S.picked_up: "picked_up_at",
    S.completed: "completed_at",
    S.cancelled: "cancelled_at",
}


class OrderNotFound(NotFound):
    code = "order_not_found"


class NotYourOrder(Forbidden):
    code = "not_your_order"


class LeaderSuspended(Conflict):
    code = "leader_suspended"


class OrderNotPayable(Conflict):
    code = "order_not_payable"


async def transition(
    s: AsyncSession,
    to: OrderStatus,
    where: str,
    params: dict[str, Any],
    extra_set: str = "",
    emit_topic: str | None = None,
    emit_payload: str = "",
) -> list[Any]:
    """Move every order matching `where` (and an allowed from-status) to `to`.

    With `emit_topic`, the same statement writes one outbox event per moved order
    (`emit_payload` is a jsonb expression over the moved row), however many there are.
    """
    allowed = ", ".join(f"'{f.value}'" for f in TRANSITIONS[to])
    sets = f"status = '{to.value}', {_STAMP[to]} = :now" + (f", {extra_set}" if extra_set else "")
    update = (
        f"UPDATE {SCHEMA}.orders SET {sets} WHERE status IN ({allowed}) AND ({where}) "
        "RETURNING id, shopper_id, leader_id, sale_date, total_fen, refunded_fen"
    )
    now = clock.now()
    if emit_topic is None:
        rows = await s.execute(text(update), {"now": now, **params})
        return list(rows.all())
    sql = (
        f"WITH moved AS ({update}), events AS ("
        + outbox_rows_sql(SCHEMA, emit_topic, "moved", emit_payload)
        + ") SELECT * FROM moved"
    )
    rows = await s.execute(text(sql), {"now": now, "occurred_at": now.isoformat(), **params})
    return list(rows.all())


# --- reading -------------------------------------------------------------------------------


async def load_order(s: AsyncSession, order_id: int, *, lock: bool = False) -> GroupOrder:
    q = select(GroupOrder).where(GroupOrder.id == order_id)
    if lock:
        q = q.with_for_update()
    order = (await s.execute(q)).scalar_one_or_none()
    if order is None:
        raise OrderNotFound(f"order {order_id} does not exist")
    return order


def authorize_read(order: GroupOrder, who: Principal) -> None:
    if who.is_staff or order.shopper_id == who.user_id:
        return
    if who.leader_id is not None and order.leader_id == who.leader_id:
        return
    raise NotYourOrder("this order is not yours")


async def lines_of(s: AsyncSession, order_ids: list[int]) -> dict[int, list[OrderLine]]:
    out: dict[int, list[OrderLine]] = {i: [] for i in order_ids}
    if not order_ids:
        return out
    rows = (
        await s.execute(
            select(OrderLine).where(OrderLine.order_id.in_(order_ids)).order_by(OrderLine.id)
        )
    ).scalars()
    for line in rows:
        out[line.order_id].append(line)
    return out


async def existing_order_ids(s: AsyncSession, order_ids: list[int]) -> list[int]:
    rows = await s.execute(
        text("SELECT id FROM orders.orders WHERE id = ANY(:ids)"), {"ids": order_ids}
    )
    return list(rows.scalars())


async def list_orders(
    s: AsyncSession,
    who: Principal,
    *,
    status: str | None,
    pickup_date: date | None,
    after_id: int | None,
    limit: int,
) -> list[GroupOrder]:
    q = select(GroupOrder).order_by(GroupOrder.id.desc()).limit(limit + 1)
    if not who.is_staff:
        if who.has("leader") and who.leader_id is not None:
            q = q.where(GroupOrder.leader_id == who.leader_id)
        else:
            q = q.where(GroupOrder.shopper_id == who.user_id)
    if status:
        q = q.where(GroupOrder.status == status)
    if pickup_date:
        q = q.where(GroupOrder.pickup_date == pickup_date)
    if after_id:
        q = q.where(GroupOrder.id < after_id)
    return list((await s.execute(q)).scalars())


# --- placing an order -------------------------------------------------------------------------


class IdBlocks:
    """Order ids taken from the sequence a block at a time: one round trip per block
    instead of a transaction per order. Ids stay unique; across processes they are not
    in creation order, which nothing relies on (lists page by id, which stays unique)."""

    def __init__(self, sequence: str, size: int = 50) -> None:
        self.sequence, self.size = sequence, size
        self._ids: list[int] = []
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def next(self, db) -> int:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._lock, self._loop, self._ids = asyncio.Lock(), loop, []
        assert self._lock is not None
        async with self._lock:
            if not self._ids:
                async with db.session() as s:
                    rows = await s.execute(
                        text(f"SELECT nextval('{self.sequence}') FROM generate_series(1, :n)"),
                        {"n": self.size},
                    )
                    self._ids = sorted((r[0] for r in rows), reverse=True)
            return self._ids.pop()


order_id_blocks = IdBlocks("orders.orders_id_seq")


async def place_order(db, who: Principal, items: list[dict]) -> tuple[GroupOrder, list[OrderLine]]:
    """Snapshot the leader and prices, hold stock, record the order; all or nothing.

    Returns the rows as inserted, so the caller need not read them back."""

    # the leader lookup and the id are independent: one round trip's wait, not two
    leader, order_id = await asyncio.gather(
        leaders_client.get(f"/internal/shoppers/{who.user_id}/leader", retries=PEER_RETRIES),
        order_id_blocks.next(db),
    )
    if not leader["accepts_orders"]:
        raise LeaderSuspended("your leader's group is not taking orders right now")
    try:
        # keyed by the order id: asked again, the catalog answers as the first time, so
        # an answer lost after the stock was held is recovered instead of held twice
        held = await catalog_client.post(
            "/internal/reservations",
            json={"order_id": order_id, "shopper_id": who.user_id, "items": items},
            retries=PEER_RETRIES,
        )
    except (PeerUnavailable, PeerTimeout):
        # the catalog may have held stock we will never record: give it back now (the
        # client's retry gets a new order id) rather than after the orphan sweep's grace
        await _release_quietly(order_id)
        raise
    try:
        async with db.transaction() as s:
            placed = await _insert_order(s, order_id, who.user_id, leader, held)
    except Exception:
        # the stock must not stay held for an order that was never recorded
        await _release_quietly(order_id)
        raise
    return placed


async def _release_quietly(order_id: int) -> None:
    """Best effort: what this cannot release, the catalog's orphan sweep does later."""
    try:
        await catalog_client.post(
            f"/internal/reservations/{order_id}/release", retries=PEER_RETRIES
        )
    except (PeerUnavailable, PeerTimeout):
        log.warning("reservation_release_deferred", order_id=order_id)


async def _insert_order(
    s: AsyncSession, order_id: int, shopper_id: int, leader: dict, held: dict
) -> tuple[GroupOrder, list[OrderLine]]:
    st = get_settings()
    now = clock.now()
    cutoff = datetime.fromisoformat(held["cutoff_at"])
    total = sum(line["unit_price_fen"] * line["quantity"] for line in held["lines"])
    order = GroupOrder(
        id=order_id,
        shopper_id=shopper_id,
        leader_id=leader["leader_id"],
        leader_tier=leader["tier"],
        # at the column's scale, so the answer built from this row reads as a stored one
        commission_rate=Decimal(str(leader["commission_rate"])).quantize(Decimal("0.0001")),
        sale_date=date.fromisoformat(held["sale_date"]),
        pickup_date=date.fromisoformat(held["pickup_date"]),
        total_fen=total,
        currency=st.currency,
        created_at=now,
        expires_at=reservation_expiry(now, cutoff, st.reservation_ttl_minutes),
    )
    s.add(order)
    await s.flush()
    lines = [
        OrderLine(
            order_id=order_id,
            deal_id=line["deal_id"],
            product_id=line["product_id"],
            product_name=line["product_name"],
            category=line["category"],
            unit_price_fen=line["unit_price_fen"],
            quantity=line["quantity"],
            group_threshold=line["group_threshold"],
        )
        for line in held["lines"]
    ]
    s.add_all(lines)
    await s.flush()
    lines.sort(key=lambda ln: ln.id)  # the order every read of an order uses
    return order, lines


async def cancel_unpaid(db, order_id: int, who: Principal) -> None:
    async with db.transaction() as s:
        order = await load_order(s, order_id)
        if order.shopper_id != who.user_id:
            raise NotYourOrder("this order is not yours")
        moved = await transition(
            s,
            S.cancelled,
            "id = :id AND status = 'pending_payment'",
            {"id": order_id},
            "cancel_reason = 'cancelled_by_shopper'",
        )
        if not moved:
            raise Conflict(
                f"order {order_id} is {order.status}; only unpaid orders can be cancelled",
                code="order_not_cancellable",
            )
        await emit(
            s, SCHEMA, "order.cancelled", {"order_id": order_id, "reason": "cancelled_by_shopper"}
        )
    kick(db)


async def expire_unpaid_orders(db) -> int:
    """Reservations are held 15 minutes (a setting); then the order is cancelled and the
    catalog gets its stock back through `order.cancelled`."""
    async with db.transaction() as s:
        moved = await transition(
            s,
            S.cancelled,
            "status = 'pending_payment' AND expires_at <= :now",
            {},
            "cancel_reason = 'expired'",
            emit_topic="order.cancelled",
            emit_payload="jsonb_build_object('order_id', id, 'reason', 'expired')",
        )
    if moved:
        kick(db)
    return len(moved)


# --- payment -------------------------------------------------------------------------------------


async def pay_order(
    db, order_id: int, who: Principal, payment_method: str | None, card: dict | None
) -> None:
    provider = get_provider()
    async with db.session() as s:
        order = await load_order(s, order_id)
    if order.shopper_id != who.user_id:
        raise NotYourOrder("this order is not yours")
    if order.status != S.pending_payment:
        if order.status == S.cancelled:
            code = (
                "order_expired"
                if order.cancel_reason in ("expired", "unpaid_at_cutoff")
                else "order_cancelled"
            )
            raise OrderNotPayable(
                f"order {order_id} was cancelled ({order.cancel_reason})", code=code
            )
        return  # already paid: paying again is a no-op, never a second charge
    if clock.now() >= order.expires_at:
        raise OrderNotPayable("the reservation has expired", code="order_expired")

    intent_id = order.payment_intent_id
    if intent_id is None:
        intent_id = (
            await provider.create_intent(
                order.total_fen,
                idempotency_key=f"order:{order_id}:intent",
                metadata={"kind": "order", "order_id": order_id},
            )
        ).id
    async with db.transaction() as s:
        # one statement: keep the first intent stored (a concurrent /pay may have won) and
        # count this attempt, only while the order still waits for its money
        row = (
            await s.execute(
                text(
                    "UPDATE orders.orders SET pay_attempts = pay_attempts + 1, "
                    "payment_intent_id = coalesce(payment_intent_id, :pi) WHERE id = :id AND "
                    "status = 'pending_payment' RETURNING payment_intent_id, pay_attempts"
                ),
                {"pi": intent_id, "id": order_id},
            )
        ).one_or_none()
    if row is None:
        return
    intent_id, attempt = row
    if card is not None:
        payment_method = await provider.create_card_method(
            card, idempotency_key=f"order:{order_id}:card:{attempt}"
        )
    try:
        intent = await provider.confirm_intent(
            intent_id, payment_method, idempotency_key=f"order:{order_id}:confirm:{attempt}"
        )
    except ProviderRejected:
        intent = await provider.retrieve_intent(intent_id)  # e.g. already confirmed by a twin
    except PaymentDeclined:
        log.info("payment_declined", order_id=order_id)
        raise
    if intent.succeeded:
        await record_payment(db, order_id, intent.id, intent.amount_fen)
    elif intent.status == "requires_payment_method":
        raise PaymentDeclined("the card was declined", code=intent.error_code or "card_declined")


def new_pickup_code() -> str:
    """12 random digits (~40 bits): unguessable under the redemption rate limit."""
    return f"{secrets.randbelow(10**12):012d}"


async def record_payment(db, order_id: int, intent_id: str, amount_fen: int) -> bool:
    """The one place an order becomes paid, from `/pay` or the webhook, whichever is first."""
    async with db.transaction() as s:
        outcome = await _record_payment(s, order_id, intent_id, amount_fen)
    if outcome == PAID:
        kick(db)
    elif outcome == REFUND_OWED:
        await execute_pending_refunds(db)  # a late payment is returned without waiting
    return outcome == PAID


PAID, ALREADY_PAID, REFUND_OWED = "paid", "already_paid", "refund_owed"


async def _record_payment(s: AsyncSession, order_id: int, intent_id: str, amount_fen: int) -> str:
    """If the order was cancelled meanwhile (expired, cutoff), the money goes back.

    The second of `/pay` and the webhook finds the order paid and does nothing more."""
    moved = await transition(
        s,
        S.paid,
        "id = :id AND payment_intent_id = :pi AND total_fen = :amount",
        {"id": order_id, "pi": intent_id, "amount": amount_fen, "code": new_pickup_code()},
        "pickup_code = :code",
    )
    if moved:
        row = moved[0]
        await emit(
            s,
            SCHEMA,
            "order.paid",
            {
                "order_id": order_id,
                "shopper_id": row.shopper_id,
                "leader_id": row.leader_id,
                "sale_date": row.sale_date.isoformat(),
                "total_fen": row.total_fen,
            },
        )
        return PAID
    order = await load_order(s, order_id)
    if order.status == S.cancelled and order.payment_intent_id == intent_id:
        await _owe_refund(s, order_id, "late_payment", intent_id, amount_fen, [])
        log.warning("payment_after_cancel_refunded", order_id=order_id)
        return REFUND_OWED
    return ALREADY_PAID


# --- refunds -----------------------------------------------------------------------------------


async def _owe_refund(
    s: AsyncSession, order_id: int, reason: str, source_ref: str, amount_fen: int, lines: list[dict]
) -> bool:
    created = (
        await s.execute(
            text(
                "INSERT INTO orders.refunds (order_id, reason, source_ref, amount_fen, lines, status, "
                "attempts, created_at) VALUES (:o, :r, :src, :a, CAST(:lines AS jsonb), 'pending', 0, :now)"
                " ON CONFLICT ON CONSTRAINT uq_refunds_source DO NOTHING RETURNING id"
            ),
            {
                "o": order_id,
                "r": reason,
                "src": source_ref,
                "a": amount_fen,
                "lines": _json(lines),
                "now": clock.now(),
            },
        )
    ).scalar_one_or_none()
    return created is not None


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


def refund_in_background(db) -> None:
    """Owed refunds go out after the response; the beat job retries what this misses."""
    after_response(lambda: execute_pending_refunds(db), "execute refunds")


async def execute_pending_refunds(db, limit: int = 50) -> int:
    """Send owed refunds to the provider, each with key `refund:<id>`, once."""
    provider = get_provider()
    done = 0
    while True:
        async with db.transaction() as s:
            rows = (
                await s.execute(
                    text(
                        "SELECT r.id, r.order_id, r.amount_fen, r.lines, r.reason, r.attempts, "
                        "o.payment_intent_id, o.leader_id FROM orders.refunds r JOIN orders.orders o "
                        "ON o.id = r.order_id WHERE r.status = 'pending' ORDER BY r.id LIMIT :n "
                        "FOR UPDATE OF r SKIP LOCKED"
                    ),
                    {"n": limit},
                )
            ).all()
            for r in rows:
                try:
                    refund = await provider.refund(
                        r.payment_intent_id,
                        r.amount_fen,
                        idempotency_key=f"refund:{r.id}",
                        metadata={"order_id": r.order_id, "refund_id": r.id},
                    )
                except Exception as e:  # noqa: BLE001 - provider trouble: retried later
                    status = "failed" if r.attempts + 1 >= 10 else "pending"
                    await s.execute(
                        text(
                            "UPDATE orders.refunds SET attempts = attempts + 1, last_error = :e, "
                            "status = :st WHERE id = :id"
                        ),
                        {"e": str(e)[:500], "st": status, "id": r.id},
                    )
                    log.warning("refund_failed", refund_id=r.id, error=str(e))
                    continue
                await s.execute(
                    text(
                        "UPDATE orders.refunds SET status = 'succeeded', provider_refund_id = :p, "
                        "succeeded_at = :now, attempts = attempts + 1 WHERE id = :id AND status = 'pending'"
                    ),
                    {"p": refund.id, "now": clock.now(), "id": r.id},
                )
                await emit(
                    s,
                    SCHEMA,
                    "order.refunded",
                    {
                        "order_id": r.order_id,
                        "refund_id": r.id,
                        "leader_id": r.leader_id,
                        "reason": r.reason,
                        "amount_fen": r.amount_fen,
                        "lines": r.lines,
                    },
                )
                done += 1
        if len(rows) < limit:
            break
    kick(db)
    return done


# --- the daily cutoff --------------------------------------------------------------------------


async def apply_cutoff(db, sale_date: date) -> dict:
    """Thresholds decided, missed lines cancelled and refunded, the rest confirmed,
    delivery lists built; all in one transaction, and a second run changes nothing."""
    params = {"d": sale_date}
    async with db.transaction() as s:
        unpaid = await transition(
            s,
            S.cancelled,
            "sale_date = :d AND status = 'pending_payment'",
            params,
            "cancel_reason = 'unpaid_at_cutoff'",
            emit_topic="order.cancelled",
            emit_payload="jsonb_build_object('order_id', id, 'reason', 'unpaid_at_cutoff')",
        )
        deals = (
            await s.execute(
                text(
                    "SELECT l.deal_id, max(l.group_threshold) AS threshold, "
                    "coalesce(sum(l.quantity) FILTER (WHERE l.status = 'active'), 0) AS qty "
                    "FROM orders.order_lines l JOIN orders.orders o ON o.id = l.order_id "
                    "WHERE o.sale_date = :d AND o.status NOT IN ('pending_payment', 'cancelled') "
                    "GROUP BY l.deal_id"
                ),
                params,
            )
        ).all()
        failed = [d.deal_id for d in deals if not threshold_met(d.qty, d.threshold)]
        # missed lines cancelled, each order's refund owed and its refunded total raised,
        # in one statement however many orders the day has
        refunded = (
            await s.execute(
                text(
                    "WITH cancelled AS (UPDATE orders.order_lines l SET status = 'cancelled', "
                    "refunded_quantity = l.quantity, refunded_fen = l.unit_price_fen * l.quantity "
                    "FROM orders.orders o WHERE l.order_id = o.id AND o.sale_date = :d "
                    "AND o.status = 'paid' AND l.status = 'active' AND l.deal_id = ANY(:failed) "
                    "RETURNING l.order_id, l.id, l.unit_price_fen * l.quantity AS amount), "
                    "per_order AS (SELECT order_id, sum(amount) AS amount, count(*) AS n, "
                    "jsonb_agg(jsonb_build_object('line_id', id, 'amount_fen', amount)) AS lines "
                    "FROM cancelled GROUP BY order_id), "
                    "totals AS (UPDATE orders.orders o SET refunded_fen = o.refunded_fen + p.amount "
                    "FROM per_order p WHERE o.id = p.order_id RETURNING o.id), "
                    "owed AS (INSERT INTO orders.refunds (order_id, reason, source_ref, amount_fen, "
                    "lines, status, attempts, created_at) SELECT order_id, 'group_threshold_missed',"
                    " 'cutoff', amount, lines, 'pending', 0, CAST(:now AS timestamptz) FROM per_order"
                    " ON CONFLICT ON CONSTRAINT uq_refunds_source DO NOTHING RETURNING id) "
                    "SELECT coalesce(sum(n), 0) AS lines FROM per_order"
                ),
                {**params, "failed": failed, "now": clock.now()},
            )
        ).scalar_one()
        emptied = await transition(
            s,
            S.cancelled,
            "sale_date = :d AND status = 'paid' AND "
            "NOT EXISTS (SELECT 1 FROM orders.order_lines l WHERE "
            "l.order_id = orders.orders.id AND l.status = 'active')",
            params,
            "cancel_reason = 'group_threshold_missed'",
            emit_topic="order.cancelled",
            emit_payload="jsonb_build_object('order_id', id, 'reason', 'group_threshold_missed')",
        )
        # lists first, so confirming an order and assigning its list is one row update
        await s.execute(
            text(
                "INSERT INTO orders.delivery_lists (sale_date, pickup_date, leader_id, status, "
                "created_at) SELECT DISTINCT sale_date, pickup_date, leader_id, 'pending', "
                "CAST(:now AS timestamptz) FROM orders.orders WHERE sale_date = :d "
                "AND status IN ('paid', 'confirmed') "
                "ON CONFLICT ON CONSTRAINT uq_delivery_lists_day_leader DO NOTHING"
            ),
            {**params, "now": clock.now()},
        )
        confirmed = await transition(
            s,
            S.confirmed,
            "sale_date = :d AND status = 'paid'",
            params,
            "delivery_list_id = (SELECT dl.id FROM orders.delivery_lists dl WHERE "
            "dl.sale_date = orders.orders.sale_date AND dl.leader_id = orders.orders.leader_id)",
            emit_topic="order.confirmed",
            emit_payload="jsonb_build_object('order_id', id, 'leader_id', leader_id)",
        )
        lists = (
            await s.execute(
                text("SELECT count(*) FROM orders.delivery_lists WHERE sale_date = :d"), params
            )
        ).scalar_one()
    kick(db)
    return {
        "sale_date": sale_date,
        "deals": [
            {
                "deal_id": d.deal_id,
                "paid_quantity": d.qty,
                "group_threshold": d.threshold,
                "outcome": "failed" if d.deal_id in failed else "succeeded",
            }
            for d in deals
        ],
        "orders_confirmed": len(confirmed),
        "orders_cancelled": len(unpaid) + len(emptied),
        "lines_refunded": int(refunded),
        "delivery_lists": lists,
    }


# --- delivery and pickup -----------------------------------------------------------------------


async def delivery_lists(s: AsyncSession, who: Principal, pickup_date: date) -> list[dict]:
    params: dict[str, Any] = {"p": pickup_date}
    mine = ""
    if not who.is_staff:
        if who.leader_id is None:
            raise Forbidden("delivery lists are for leaders and staff", code="wrong_role")
        mine = " AND dl.leader_id = :leader"
        params["leader"] = who.leader_id
    lists = (
        await s.execute(
            text(
                "SELECT dl.id, dl.sale_date, dl.pickup_date, dl.leader_id, dl.status FROM "
                f"orders.delivery_lists dl WHERE dl.pickup_date = :p{mine} ORDER BY dl.leader_id"
            ),
            params,
        )
    ).all()
    if not lists:
        return []
    ids = [dl.id for dl in lists]
    lines = (
        await s.execute(
            text(
                "SELECT o.delivery_list_id AS list_id, l.deal_id, l.product_id, l.product_name, "
                "sum(l.quantity - l.refunded_quantity) AS quantity FROM orders.orders o "
                "JOIN orders.order_lines l ON l.order_id = o.id WHERE o.delivery_list_id = ANY(:ids) "
                "AND l.status = 'active' GROUP BY o.delivery_list_id, l.deal_id, l.product_id, "
                "l.product_name ORDER BY l.deal_id"
            ),
            {"ids": ids},
        )
    ).all()
    orders = (
        await s.execute(
            text(
                "SELECT delivery_list_id AS list_id, id FROM orders.orders WHERE delivery_list_id = "
                "ANY(:ids) ORDER BY id"
            ),
            {"ids": ids},
        )
    ).all()
    out = {
        dl.id: {
            "id": dl.id,
            "sale_date": dl.sale_date,
            "pickup_date": dl.pickup_date,
            "leader_id": dl.leader_id,
            "status": dl.status,
            "lines": [],
            "orders": [],
        }
        for dl in lists
    }
    for line in lines:
        out[line.list_id]["lines"].append(
            {
                "deal_id": line.deal_id,
                "product_id": line.product_id,
                "product": line.product_name,
                "quantity": int(line.quantity),
            }
        )
    for o in orders:
        out[o.list_id]["orders"].append(o.id)
    return list(out.values())


async def sorting_list(s: AsyncSession, pickup_date: date) -> list[dict]:
    """分拣单: per product, how many go to which leader."""
    rows = (
        await s.execute(
            text(
                "SELECT l.deal_id, l.product_id, l.product_name, o.leader_id, "
                "sum(l.quantity - l.refunded_quantity) AS quantity FROM orders.orders o "
                "JOIN orders.order_lines l ON l.order_id = o.id WHERE o.pickup_date = :p "
                "AND o.delivery_list_id IS NOT NULL AND l.status = 'active' "
                "GROUP BY l.deal_id, l.product_id, l.product_name, o.leader_id "
                "ORDER BY l.deal_id, o.leader_id"
            ),
            {"p": pickup_date},
        )
    ).all()
    products: dict[int, dict] = {}
    for r in rows:
        p = products.setdefault(
            r.deal_id,
            {
                "deal_id": r.deal_id,
                "product_id": r.product_id,
                "product": r.product_name,
                "total_quantity": 0,
                "leaders": [],
            },
        )
        p["total_quantity"] += int(r.quantity)
        p["leaders"].append({"leader_id": r.leader_id, "quantity": int(r.quantity)})
    return list(products.values())


async def mark_delivery_received(db, list_id: int, who: Principal) -> int:
    async with db.transaction() as s:
        dl = (
            await s.execute(
                text("SELECT id, leader_id, status FROM orders.delivery_lists WHERE id = :id"),
                {"id": list_id},
            )
        ).first()
        if dl is None:
            raise NotFound(
                f"delivery list {list_id} does not exist", code="delivery_list_not_found"
            )
        if dl.leader_id != who.leader_id:
            raise Forbidden("this delivery list is another leader's", code="not_your_delivery_list")
        await s.execute(
            text(
                "UPDATE orders.delivery_lists SET status = 'received', "
                "received_at = :now WHERE id = :id AND status = 'pending'"
            ),
            {"id": list_id, "now": clock.now()},
        )
        ready = await transition(
            s,
            S.ready_for_pickup,
            "delivery_list_id = :dl",
            {"dl": list_id},
            emit_topic="order.ready_for_pickup",
            emit_payload="jsonb_build_object('order_id', id, 'leader_id', leader_id)",
        )
    kick(db)
    return len(ready)


async def redeem_pickup(db, code: str, who: Principal) -> int:
    """The leader verifies a shopper's pickup code: usable once, only by that order's leader."""
    if who.leader_id is None:
        raise Forbidden("only leaders redeem pickup codes", code="wrong_role")
    async with db.transaction() as s:
        moved = await transition(
            s, S.picked_up, "pickup_code = :c AND leader_id = :l", {"c": code, "l": who.leader_id}
        )
        if not moved:
            order = (
                await s.execute(
                    select(GroupOrder).where(
                        GroupOrder.pickup_code == code, GroupOrder.leader_id == who.leader_id
                    )
                )
            ).scalar_one_or_none()
            if order is None:
                raise NotFound(
                    "no order of yours has this pickup code", code="pickup_code_not_found"
                )
            if order.status in (S.picked_up, S.completed):
                raise Conflict("this order was already picked up", code="already_picked_up")
            raise Conflict(
                f"this order is {order.status}, not ready for pickup", code="not_ready_for_pickup"
            )
        order = await load_order(s, moved[0].id)
        lines = [ln for ln in (await lines_of(s, [order.id]))[order.id] if ln.status == "active"]
        await emit(
            s,
            SCHEMA,
            "order.picked_up",
            {
                "order_id": order.id,
                "shopper_id": order.shopper_id,
                "leader_id": order.leader_id,
                "leader_tier": order.leader_tier,
                "commission_rate": str(order.commission_rate),
                "sale_date": order.sale_date.isoformat(),
                "picked_up_at": order.picked_up_at.isoformat(),
                "total_fen": order.total_fen,
                "refunded_fen": order.refunded_fen,
                "lines": [
                    {
                        "line_id": ln.id,
                        "deal_id": ln.deal_id,
                        "base_fen": ln.unit_price_fen * ln.quantity - ln.refunded_fen,
                    }
                    for ln in lines
                ],
            },
        )
    kick(db)
    return order.id


# --- provider webhooks ---------------------------------------------------------------------------


async def handle_provider_event(db, event: dict) -> bool:
    """Store the verified event and act on it in one transaction; a redelivery is
    acknowledged and ignored."""
    obj = (event.get("data") or {}).get("object") or {}
    meta = obj.get("metadata") or {}
    async with db.transaction() as s:
        fresh = (
            await s.execute(
                text(
                    "INSERT INTO orders.payment_events (id, type, payload, received_at) VALUES "
                    "(:id, :t, CAST(:p AS jsonb), :now) ON CONFLICT (id) DO NOTHING RETURNING id"
                ),
                {"id": event["id"], "t": event["type"], "p": _json(event), "now": clock.now()},
            )
        ).scalar_one_or_none()
        if fresh is None:
            return False
        outcome = PAID
        if event["type"] == "payment_intent.succeeded" and meta.get("kind") == "order":
            outcome = await _record_payment(s, int(meta["order_id"]), obj["id"], int(obj["amount"]))
        elif event["type"] == "payment_intent.succeeded" and meta.get("kind") == "deposit":
            # the webhook lands here; a leader's deposit belongs to the leaders service
            await emit(
                s,
                SCHEMA,
                "payment.deposit_succeeded",
                {
                    "leader_id": int(meta["leader_id"]),
                    "intent_id": obj["id"],
                    "amount_fen": int(obj["amount"]),
                },
            )
    kick(db)
    if outcome == REFUND_OWED:
        await execute_pending_refunds(db)
    return True


# --- after-sales (售后) and completion ----------------------------------------------------------


class AfterSalesClosed(Conflict):
    code = "after_sales_window_closed"


async def request_after_sales(
    db, order_id: int, who: Principal, lines: list[dict], reason: str
) -> int:
    """Within the window after pickup, claim some units of some lines for a refund."""
    st = get_settings()
    async with db.transaction() as s:
        order = await load_order(s, order_id)
        if order.shopper_id != who.user_id:
            raise NotYourOrder("this order is not yours")
        if order.status != S.picked_up or order.picked_up_at is None:
            raise Conflict(
                f"order {order_id} is {order.status}; after-sales starts at pickup",
                code="not_picked_up",
            )
        if not after_sales_open(order.picked_up_at, clock.now(), st.after_sales_window_hours):
            raise AfterSalesClosed(
                f"after-sales closes {st.after_sales_window_hours} h after pickup"
            )
        wanted: dict[int, int] = {}
        for line in lines:
            wanted[line["line_id"]] = wanted.get(line["line_id"], 0) + line["quantity"]
        claimed, amount = [], 0
        for line_id in sorted(wanted):
            row = (
                await s.execute(
                    text(
                        "UPDATE orders.order_lines SET after_sales_quantity = after_sales_quantity + :q "
                        "WHERE id = :id AND order_id = :o AND status = 'active' AND "
                        "after_sales_quantity + :q <= quantity RETURNING unit_price_fen"
                    ),
                    {"q": wanted[line_id], "id": line_id, "o": order_id},
                )
            ).first()
            if row is None:
                exists = (
                    await s.execute(
                        text(
                            "SELECT quantity - after_sales_quantity FROM orders.order_lines WHERE id = :id "
                            "AND order_id = :o AND status = 'active'"
                        ),
                        {"id": line_id, "o": order_id},
                    )
                ).scalar_one_or_none()
                if exists is None:
                    raise NotFound(
                        f"line {line_id} is not an active line of order {order_id}",
                        code="line_not_found",
                    )
                raise Conflict(
                    f"line {line_id} has {exists} unit(s) left to refund",
                    code="too_many_units",
                    status=422,
                )
            claimed.append(
                {
                    "line_id": line_id,
                    "quantity": wanted[line_id],
                    "amount_fen": row.unit_price_fen * wanted[line_id],
                }
            )
            amount += row.unit_price_fen * wanted[line_id]
        request = AfterSalesRequest(
            order_id=order_id,
            shopper_id=order.shopper_id,
            leader_id=order.leader_id,
            reason=reason,
            lines=claimed,
            amount_fen=amount,
            created_at=clock.now(),
        )
        s.add(request)
        await s.flush()
        return request.id


async def load_after_sales(s: AsyncSession, request_id: int) -> AfterSalesRequest:
    req = await s.get(AfterSalesRequest, request_id)
    if req is None:
        raise NotFound(
            f"after-sales request {request_id} does not exist", code="after_sales_not_found"
        )
    return req


def authorize_after_sales_decision(req: AfterSalesRequest, who: Principal) -> None:
    if who.is_staff or (who.leader_id is not None and who.leader_id == req.leader_id):
        return
    raise Forbidden(
        "only the order's leader or staff decide after-sales", code="not_your_after_sales"
    )


async def decide_after_sales(
    db, request_id: int, who: Principal, approve: bool, note: str | None
) -> AfterSalesRequest:
    """Approve: the refund is owed once (conditional status change) and executed with key
    `refund:<id>`; reject: the units are released for another request."""
    async with db.transaction() as s:
        req = await load_after_sales(s, request_id)
        authorize_after_sales_decision(req, who)
        status = "approved" if approve else "rejected"
        moved = (
            await s.execute(
                text(
                    "UPDATE orders.after_sales_requests SET status = :st, decided_by = :by, "
                    "decision_note = :note, decided_at = :now WHERE id = :id AND status = 'requested' "
                    "RETURNING id"
                ),
                {
                    "st": status,
                    "by": who.user_id,
                    "note": note,
                    "now": clock.now(),
                    "id": request_id,
                },
            )
        ).scalar_one_or_none()
        if moved is None:
            raise Conflict(
                f"after-sales request {request_id} was already {req.status}",
                code="after_sales_already_decided",
            )
        for line in req.lines:
            if approve:
                await s.execute(
                    text(
                        "UPDATE orders.order_lines SET refunded_quantity = refunded_quantity + :q, "
                        "refunded_fen = refunded_fen + :a WHERE id = :id"
                    ),
                    {"q": line["quantity"], "a": line["amount_fen"], "id": line["line_id"]},
                )
            else:
                await s.execute(
                    text(
                        "UPDATE orders.order_lines SET after_sales_quantity = after_sales_quantity - :q"
                        " WHERE id = :id"
                    ),
                    {"q": line["quantity"], "id": line["line_id"]},
                )
        if approve:
            await s.execute(
                text("UPDATE orders.orders SET refunded_fen = refunded_fen + :a WHERE id = :id"),
                {"a": req.amount_fen, "id": req.order_id},
            )
            await _owe_refund(
                s, req.order_id, "after_sales", str(req.id), req.amount_fen, req.lines
            )
        await s.refresh(req)
    if approve:
        await execute_pending_refunds(db)
    return req


async def list_after_sales(
    s: AsyncSession, who: Principal, status: str | None, after_id: int | None, limit: int
) -> list[AfterSalesRequest]:
    q = select(AfterSalesRequest).order_by(AfterSalesRequest.id.desc()).limit(limit + 1)
    if not who.is_staff:
        if who.leader_id is not None:
            q = q.where(AfterSalesRequest.leader_id == who.leader_id)
        else:
            q = q.where(AfterSalesRequest.shopper_id == who.user_id)
    if status:
        q = q.where(AfterSalesRequest.status == status)
    if after_id:
        q = q.where(AfterSalesRequest.id < after_id)
    return list((await s.execute(q)).scalars())


async def complete_orders_past_window(db) -> int:
    """`completed` once the after-sales window has closed and no request is still open."""
    hours = get_settings().after_sales_window_hours
    async with db.transaction() as s:
        moved = await transition(
            s,
            S.completed,
            "status = 'picked_up' AND picked_up_at + make_interval(hours => :h) <= :now AND "
            "NOT EXISTS (SELECT 1 FROM orders.after_sales_requests r WHERE "
            "r.order_id = orders.orders.id AND r.status = 'requested')",
            {"h": hours},
        )
        if moved:
            rows = (
                await s.execute(
                    text(
                        "SELECT id, shopper_id, leader_id, total_fen, refunded_fen, completed_at FROM "
                        "orders.orders WHERE id = ANY(:ids)"
                    ),
                    {"ids": [r.id for r in moved]},
                )
            ).all()
            for r in rows:
                await emit(
                    s,
                    SCHEMA,
                    "order.completed",
                    {
                        "order_id": r.id,
                        "shopper_id": r.shopper_id,
                        "leader_id": r.leader_id,
                        "total_fen": r.total_fen,
                        "refunded_fen": r.refunded_fen,
                        "completed_at": r.completed_at.isoformat(),
                    },
                )
    if moved:
        kick(db)
    return len(moved)
