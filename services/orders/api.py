"""Orders routes: thin translations between HTTP and `service`."""

import csv
import io
from datetime import date
from typing import cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from services.common.auth import (
    CurrentPrincipal,
    Leader,
    LeaderOrStaff,
    Shopper,
    Staff,
    require_service_token,
)
from services.common.bounds import PathId
from services.common.db import get_db
from services.common.errors import PaymentFailed
from services.common.metrics import ORDERS_PLACED, PAYMENTS_FAILED
from services.common.pagination import Page, PageDep, make_page
from services.common.payments import verify_webhook

from . import service
from .models import OrderStatus
from .schemas import (
    AfterSalesIn,
    AfterSalesOut,
    ApproveIn,
    CutoffOut,
    DeliveryListOut,
    KnownOrdersIn,
    LeaderProjectionIn,
    LineOut,
    OrderIn,
    OrderOut,
    PayIn,
    PaymentOut,
    PickupIn,
    RejectIn,
    SortingListOut,
)

db = get_db("orders")
router = APIRouter(prefix="/orders", tags=["orders"])
payments = APIRouter(prefix="/payments", tags=["payments"])
internal = APIRouter(
    prefix="/internal",
    tags=["internal"],
    dependencies=[Depends(require_service_token)],
    include_in_schema=False,
)


def _order_out(order, lines, who) -> OrderOut:
    return _order_out_of(order.model_dump(), [ln.model_dump() for ln in lines], who)


def _order_out_of(order: dict, lines: list[dict], who) -> OrderOut:
    """The answer for an order from its columns and its lines' columns."""
    show_code = who is not None and order["shopper_id"] == who.user_id
    payment_status = (
        "succeeded"
        if order["paid_at"]
        else "canceled"
        if order["status"] == OrderStatus.cancelled
        else "requires_payment"
    )
    return OrderOut(
        **{k: v for k, v in order.items() if k != "pickup_code"},
        pickup_code=order["pickup_code"] if show_code else None,
        lines=[LineOut(**ln, amount_fen=ln["unit_price_fen"] * ln["quantity"]) for ln in lines],
        payment=PaymentOut(
            intent_id=order["payment_intent_id"],
            status=payment_status,
            amount_fen=order["total_fen"],
            currency=order["currency"],
        ),
    )


async def _read(order_id: int, who) -> OrderOut:
    async with db.session() as s:
        order = await service.load_order(s, order_id)
        service.authorize_read(order, who)
        lines = (await service.lines_of(s, [order_id]))[order_id]
    return _order_out(order, lines, who)


@router.post("", response_model=OrderOut, status_code=201)
async def place_order(body: OrderIn, who: Shopper) -> OrderOut:
    # built from the rows just inserted: reading them back cost a connection and two queries
    order, lines = await service.place_order(db, who, [i.model_dump() for i in body.items])
    ORDERS_PLACED.inc()
    return _order_out_of(order, lines, who)


@router.get("", response_model=Page[OrderOut])
async def list_orders(
    who: CurrentPrincipal,
    page: PageDep,
    status: OrderStatus | None = None,
    pickup_date: date | None = None,
) -> Page[OrderOut]:
    async with db.session() as s:
        rows = await service.list_orders(
            s, who, status=status, pickup_date=pickup_date, after_id=page.after_id, limit=page.limit
        )
        rows, cursor = make_page(rows, page)
        # cast: stored rows have their ids (the model says int | None for a new one)
        lines = await service.lines_of(s, [cast(int, o.id) for o in rows])
    return Page(
        items=[_order_out(o, lines[cast(int, o.id)], who) for o in rows], next_cursor=cursor
    )


@router.get("/delivery-lists", response_model=list[DeliveryListOut])
async def delivery_lists(who: CurrentPrincipal, pickup_date: date) -> list[DeliveryListOut]:
    async with db.session() as s:
        return [DeliveryListOut(**dl) for dl in await service.delivery_lists(s, who, pickup_date)]


@router.post("/delivery-lists/{list_id}/received")
async def delivery_received(list_id: PathId, who: Leader) -> dict:
    ready = await service.mark_delivery_received(db, list_id, who)
    return {"id": list_id, "status": "received", "orders_ready": ready}


@router.get(
    "/sorting-list", response_model=SortingListOut, responses={200: {"content": {"text/csv": {}}}}
)
async def sorting_list(request: Request, _: Staff, pickup_date: date):
    async with db.session() as s:
        products = await service.sorting_list(s, pickup_date)
    if "text/csv" in request.headers.get("accept", ""):
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["deal_id", "product_id", "product", "leader_id", "quantity"])
        for p in products:
            for leader in p["leaders"]:
                writer.writerow(
                    [
                        p["deal_id"],
                        p["product_id"],
                        p["product"],
                        leader["leader_id"],
                        leader["quantity"],
                    ]
                )
        return Response(
            "\ufeff" + buf.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="sorting-{pickup_date}.csv"'},
        )
    return SortingListOut(pickup_date=pickup_date, products=products)


@router.post("/pickups", response_model=OrderOut)
async def redeem_pickup(body: PickupIn, who: Leader) -> OrderOut:
    order_id = await service.redeem_pickup(db, body.pickup_code.strip(), who)
    return await _read(order_id, who)


@router.get("/after-sales", response_model=Page[AfterSalesOut])
async def list_after_sales(
    who: CurrentPrincipal, page: PageDep, status: str | None = None
) -> Page[AfterSalesOut]:
    async with db.session() as s:
        rows = await service.list_after_sales(s, who, status, page.after_id, page.limit)
    rows, cursor = make_page(rows, page)
    return Page(items=[AfterSalesOut(**r.model_dump()) for r in rows], next_cursor=cursor)


@router.post("/after-sales/{request_id}/approve", response_model=AfterSalesOut)
async def approve_after_sales(
    request_id: PathId, who: LeaderOrStaff, body: ApproveIn | None = None
) -> AfterSalesOut:
    req = await service.decide_after_sales(db, request_id, who, True, body.note if body else None)
    return AfterSalesOut(**req.model_dump())


@router.post("/after-sales/{request_id}/reject", response_model=AfterSalesOut)
async def reject_after_sales(
    request_id: PathId, body: RejectIn, who: LeaderOrStaff
) -> AfterSalesOut:
    req = await service.decide_after_sales(db, request_id, who, False, body.reason)
    return AfterSalesOut(**req.model_dump())


@router.get("/{order_id}", response_model=OrderOut)
async def get_order(order_id: PathId, who: CurrentPrincipal) -> OrderOut:
    return await _read(order_id, who)


@router.post("/{order_id}/pay", response_model=OrderOut)
async def pay(order_id: PathId, body: PayIn, who: Shopper) -> OrderOut:
    try:
        await service.pay_order(
            db, order_id, who, body.payment_method, body.card.model_dump() if body.card else None
        )
    except PaymentFailed as e:
        PAYMENTS_FAILED.labels(code=e.code).inc()
        raise
    return await _read(order_id, who)


@router.post("/{order_id}/cancel", response_model=OrderOut)
async def cancel(order_id: PathId, who: Shopper) -> OrderOut:
    await service.cancel_unpaid(db, order_id, who)
    return await _read(order_id, who)


@router.post("/{order_id}/after-sales", response_model=AfterSalesOut, status_code=201)
async def request_after_sales(order_id: PathId, body: AfterSalesIn, who: Shopper) -> AfterSalesOut:
    request_id = await service.request_after_sales(
        db, order_id, who, [line.model_dump() for line in body.lines], body.reason
    )
    async with db.session() as s:
        return AfterSalesOut(**(await service.load_after_sales(s, request_id)).model_dump())


@payments.post("/webhook")
async def webhook(request: Request) -> dict:
    payload = await request.body()
    event = verify_webhook(payload, request.headers.get("stripe-signature"))
    fresh = await service.handle_provider_event(db, event)
    return {"received": True, "duplicate": not fresh}


@internal.post("/sale-days/{sale_date}/cutoff", response_model=CutoffOut)
async def cutoff(sale_date: date) -> CutoffOut:
    result = CutoffOut(**await service.apply_cutoff(db, sale_date))
    service.refund_in_background(db)
    return result


@internal.post("/orders/known")
async def known_orders(body: KnownOrdersIn) -> dict:
    """Which of these order ids exist (catalog's orphaned-reservation sweep asks)."""
    async with db.session() as s:
        return {"order_ids": await service.existing_order_ids(s, body.order_ids)}


@internal.post("/leader-projection", status_code=204)
async def leader_projection(body: LeaderProjectionIn) -> None:
    """The leaders service's push of changes a person acts on at once (a shopper's new
    pickup point, a suspension): the next order sees them (service/leaders.py)."""
    async with db.transaction() as s:
        await service.apply_leader_copy(
            s, [b.model_dump() for b in body.bindings], [t.model_dump() for t in body.leaders]
        )


routers = [router, payments, internal]
