"""The daily cutoff: unpaid orders cancelled, thresholds decided, missed lines refunded,
the rest confirmed, delivery lists built; set-based and safe to repeat.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import text

from services.common.clock import clock
from services.common.events import kick
from services.contracts.deals import group_outcome
from services.contracts.events import OrderCancelled, OrderConfirmed

from .core import S, transition


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
            event=lambda o: OrderCancelled(order_id=o.id, reason="unpaid_at_cutoff"),
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
        outcomes = {d.deal_id: group_outcome(d.qty, d.threshold) for d in deals}
        failed = [deal_id for deal_id, o in outcomes.items() if o == "failed"]
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
            event=lambda o: OrderCancelled(order_id=o.id, reason="group_threshold_missed"),
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
            event=lambda o: OrderConfirmed(order_id=o.id, leader_id=o.leader_id),
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
                "outcome": outcomes[d.deal_id],
            }
            for d in deals
        ],
        "orders_confirmed": len(confirmed),
        "orders_cancelled": len(unpaid) + len(emptied),
        "lines_refunded": int(refunded),
        "delivery_lists": lists,
    }
