"""Catalog routes: thin translations between HTTP and `service`."""

from datetime import date

from fastapi import APIRouter, Depends, Request

from services.common.auth import Staff, optional_principal, require_service_token
from services.common.bounds import PathId
from services.common.db import get_db
from services.common.events import kick
from services.common.pagination import Page, PageDep, make_page

from . import service
from .schemas import (
    CloseOut,
    DealIn,
    DealOut,
    ProductIn,
    ProductOut,
    ReservationIn,
    ReservationOut,
    SaleDayOut,
    StockTopUpIn,
)

db = get_db("catalog")
router = APIRouter(prefix="/catalog", tags=["catalog"])
internal = APIRouter(
    prefix="/internal",
    tags=["internal"],
    dependencies=[Depends(require_service_token)],
    include_in_schema=False,
)


def _product(p) -> ProductOut:
    return ProductOut(**p.model_dump())


def _deal(d, p) -> DealOut:
    return DealOut(
        id=d.id,
        sale_date=d.sale_date,
        product=_product(p),
        group_price_fen=d.group_price_fen,
        list_price_fen=d.list_price_fen,
        stock=d.stock,
        remaining=d.stock - d.reserved,
        ordered=d.reserved,
        per_shopper_limit=d.per_shopper_limit,
        group_threshold=d.group_threshold,
        outcome=d.outcome,
    )


async def _day(s, sale_day) -> SaleDayOut:
    deals = await service.deals_of(s, sale_day.sale_date)
    return SaleDayOut(
        date=sale_day.sale_date,
        status=sale_day.status,
        opens_at=sale_day.published_at,
        cutoff_at=sale_day.cutoff_at,
        pickup_date=sale_day.pickup_date,
        deals=[_deal(d, p) for d, p in deals],
    )


@router.post("/products", response_model=ProductOut, status_code=201)
async def create_product(body: ProductIn, _: Staff) -> ProductOut:
    async with db.transaction() as s:
        return _product(await service.create_product(s, body))


@router.get("/products", response_model=Page[ProductOut])
async def list_products(_: Staff, page: PageDep) -> Page[ProductOut]:
    async with db.session() as s:
        rows = await service.list_products(s, page.after_id, page.limit)
    rows, cursor = make_page(rows, page)
    return Page(items=[_product(p) for p in rows], next_cursor=cursor)


@router.post("/days/{day}/deals", response_model=DealOut, status_code=201)
async def add_deal(day: date, body: DealIn, _: Staff) -> DealOut:
    async with db.transaction() as s:
        deal, product = await service.add_deal(s, day, body)
        return _deal(deal, product)


@router.post("/days/{day}/deals/{deal_id}/stock", response_model=DealOut)
async def top_up_stock(day: date, deal_id: PathId, body: StockTopUpIn, _: Staff) -> DealOut:
    async with db.transaction() as s:
        deal = await service.top_up_stock(s, day, deal_id, body.add)
        product = await s.get(service.Product, deal.product_id)
        return _deal(deal, product)


@router.post("/days/{day}/publish", response_model=SaleDayOut)
async def publish(day: date, _: Staff) -> SaleDayOut:
    async with db.transaction() as s:
        return await _day(s, await service.publish_sale_day(s, day))


@router.post("/days/{day}/close", response_model=CloseOut)
async def close(day: date, _: Staff) -> CloseOut:
    return CloseOut(**await service.close_sale_day(db, day))


@router.get("/today", response_model=SaleDayOut)
async def today() -> SaleDayOut:
    async with db.session() as s:
        return await _day(s, await service.open_sale_day(s))


@router.get("/days/{day}", response_model=SaleDayOut)
async def get_day(day: date, request: Request) -> SaleDayOut:
    who = optional_principal(request)
    async with db.session() as s:
        sale_day = await service.get_sale_day(s, day)
        if sale_day.status == "draft" and not (who and who.is_staff):
            # a day being curated is staff's business until it is published
            raise service.SaleDayNotFound(f"no sale day {day.isoformat()}")
        return await _day(s, sale_day)


@internal.post("/reservations", response_model=ReservationOut)
async def reserve(body: ReservationIn) -> ReservationOut:
    try:
        async with db.begin() as s:
            held = await service.reserve(s, body.order_id, body.shopper_id, body.items)
    except service.AlreadyReserved:
        # a retry of an order already held (its first answer was lost): the same answer
        async with db.statement() as s:
            existing = await service.existing(s, body.order_id)
        assert existing is not None  # the key that refused the hold is a committed row
        held = existing
    return ReservationOut(**held)


@internal.post("/reservations/{order_id}/release", status_code=204)
async def release(order_id: PathId) -> None:
    async with db.transaction() as s:
        await service.release_reservation(s, order_id)
    kick(db)


routers = [router, internal]
