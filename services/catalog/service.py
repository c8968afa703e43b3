"""Catalog rules: products, the daily curated list of deals, stock that never oversells,
and the daily cutoff."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlmodel import col, select

from services.common.clock import clock, local_datetime, parse_hhmm
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.http import ServiceClient
from services.common.settings import get_settings
from services.contracts.deals import group_outcome

from .models import Deal, DealOutcome, Product, SaleDay, SaleDayStatus
from .schemas import DealIn, ProductIn, ReservationItemIn

orders_client = ServiceClient("orders")


class CatalogSize(InvalidInput):
    code = "catalog_size"


class OutOfStock(Conflict):
    code = "out_of_stock"


class SaleDayNotOpen(Conflict):
    code = "sale_day_not_open"


class PastCutoff(Conflict):
    code = "past_cutoff"


class PerShopperLimit(InvalidInput):
    code = "per_shopper_limit"


class DealNotFound(NotFound):
    code = "deal_not_found"


class SaleDayNotFound(NotFound):
    code = "sale_day_not_found"


class SaleDayReadOnly(Conflict):
    code = "sale_day_read_only"


# --- products -----------------------------------------------------------------------------


async def create_product(s: AsyncSession, data: ProductIn) -> Product:
    product = Product(**data.model_dump())
    s.add(product)
    try:
        await s.flush()
    except IntegrityError as e:
        raise Conflict(f"a product with sku {data.sku!r} exists", code="duplicate_sku") from e
    return product


async def list_products(s: AsyncSession, after_id: int | None, limit: int) -> list[Product]:
    q = select(Product).order_by(col(Product.id).desc()).limit(limit + 1)
    if after_id:
        q = q.where(col(Product.id) < after_id)
    return list((await s.execute(q)).scalars())


# --- sale days and deals ------------------------------------------------------------------


def cutoff_for(day: date) -> datetime:
    st = get_settings()
    return local_datetime(day, parse_hhmm(st.cutoff_time), st.timezone)


async def ensure_sale_day(s: AsyncSession, day: date) -> SaleDay:
    st = get_settings()
    await s.execute(
        text(
            "INSERT INTO catalog.sale_days (sale_date, status, cutoff_at, pickup_date, created_at) "
            "VALUES (:d, 'draft', :cutoff, :pickup, :now) ON CONFLICT (sale_date) DO NOTHING"
        ),
        {
            "d": day,
            "cutoff": cutoff_for(day),
            "pickup": day + timedelta(days=st.pickup_days_after),
            "now": clock.now(),
        },
    )
    return (
        await s.execute(select(SaleDay).where(SaleDay.sale_date == day).with_for_update())
    ).scalar_one()


async def get_sale_day(s: AsyncSession, day: date) -> SaleDay:
    sale_day = await s.get(SaleDay, day)
    if sale_day is None:
        raise SaleDayNotFound(f"no sale day {day.isoformat()}")
    return sale_day


async def add_deal(s: AsyncSession, day: date, data: DealIn) -> tuple[Deal, Product]:
    sale_day = await ensure_sale_day(s, day)
    if sale_day.status != SaleDayStatus.draft:
        raise SaleDayReadOnly(f"sale day {day} is {sale_day.status}; deals can no longer be added")
    if sale_day.cutoff_at <= clock.now():
        raise PastCutoff(f"the cutoff of {day} has passed")
    product = await s.get(Product, data.product_id)
    if product is None:
        raise NotFound(f"product {data.product_id} does not exist", code="product_not_found")
    assert product.id is not None  # a stored row has its id
    deal = Deal(
        sale_date=day,
        product_id=product.id,
        group_price_fen=data.group_price_fen,
        list_price_fen=product.list_price_fen,
        stock=data.stock,
        per_shopper_limit=data.per_shopper_limit,
        group_threshold=data.group_threshold,
    )
    s.add(deal)
    try:
        await s.flush()
    except IntegrityError as e:
        # the failed flush rolled the transaction back and expired `product`: reading
        # product.id here would be a 500 instead of this 409
        raise Conflict(
            f"product {data.product_id} already has a deal on {day}", code="duplicate_deal"
        ) from e
    return deal, product


async def publish_sale_day(s: AsyncSession, day: date) -> SaleDay:
    st = get_settings()
    sale_day = (
        await s.execute(select(SaleDay).where(SaleDay.sale_date == day).with_for_update())
    ).scalar_one_or_none()
    if sale_day is None:
        raise CatalogSize(
            f"{day} has 0 deals; a sale day needs {st.min_deals_per_day}-{st.max_deals_per_day}",
            count=0,
        )
    if sale_day.status == SaleDayStatus.published:
        return sale_day
    if sale_day.status != SaleDayStatus.draft:
        raise SaleDayReadOnly(f"sale day {day} is {sale_day.status}")
    count = (
        await s.execute(text("SELECT count(*) FROM catalog.deals WHERE sale_date = :d"), {"d": day})
    ).scalar_one()
    if not st.min_deals_per_day <= count <= st.max_deals_per_day:
        raise CatalogSize(
            f"{day} has {count} deals; a sale day needs {st.min_deals_per_day}-"
            f"{st.max_deals_per_day}",
            count=count,
        )
    if sale_day.cutoff_at <= clock.now():
        raise PastCutoff(f"the cutoff of {day} has passed")
    await s.execute(
        text(
            "UPDATE catalog.sale_days SET status = 'published', published_at = :now "
            "WHERE sale_date = :d AND status = 'draft'"
        ),
        {"d": day, "now": clock.now()},
    )
    await s.refresh(sale_day)
    return sale_day


async def top_up_stock(s: AsyncSession, day: date, deal_id: int, add: int) -> Deal:
    """The one change a published day allows: more stock (never less: units may be held)."""
    row = (
        await s.execute(
            text(
                "UPDATE catalog.deals d SET stock = d.stock + :add FROM catalog.sale_days sd "
                "WHERE d.id = :id AND d.sale_date = :d AND sd.sale_date = d.sale_date "
                "AND sd.status IN ('draft', 'published') RETURNING d.id"
            ),
            {"add": add, "id": deal_id, "d": day},
        )
    ).first()
    if row is None:
        deal = await s.get(Deal, deal_id)
        if deal is None or deal.sale_date != day:
            raise DealNotFound(f"deal {deal_id} is not on {day}")
        raise SaleDayReadOnly(f"sale day {day} is closed")
    deal = await s.get(Deal, deal_id)
    assert deal is not None  # the UPDATE above found it
    await s.refresh(deal)
    return deal


async def deals_of(s: AsyncSession, day: date) -> list[tuple[Deal, Product]]:
    rows = (
        await s.execute(
            select(Deal, Product)
            .join(Product, col(Product.id) == Deal.product_id)
            .where(Deal.sale_date == day)
            .order_by(col(Deal.id))
        )
    ).all()
    return [(d, p) for d, p in rows]


async def open_sale_day(s: AsyncSession) -> SaleDay:
    """The day shoppers can order from now: the earliest published day before its cutoff."""
    day = (
        await s.execute(
            select(SaleDay)
            .where(SaleDay.status == SaleDayStatus.published, SaleDay.cutoff_at > clock.now())
            .order_by(col(SaleDay.sale_date))
            .limit(1)
        )
    ).scalar_one_or_none()
    if day is None:
        raise SaleDayNotFound("no sale day is open for orders right now", code="no_open_sale_day")
    return day


# --- stock reservations (the hot path) --------------------------------------------------------

# One statement per deal of an order: the stock held, the shopper's running quantity
# raised within the deal's limit, the hold recorded. Its parts all run, so when one finds
# nothing (no row: no stock, or the day closed; `within_limit` false) the caller raises
# and its transaction rolls the others back. A second hold for the same (order, deal)
# breaks the reservations' key: a retry of an order already held, answered from the
# rows of the first (`existing`).
# (Four statements before: a read for retries, the stock, the quantity, the hold.)
_RESERVE = text("""
    WITH d AS (
        UPDATE catalog.deals d SET reserved = d.reserved + :q
        FROM catalog.sale_days sd, catalog.products p
        WHERE d.id = :id AND sd.sale_date = d.sale_date AND p.id = d.product_id
          AND sd.status = 'published' AND sd.cutoff_at > :now
          AND d.reserved + :q <= d.stock AND :q <= d.per_shopper_limit
        RETURNING d.id, d.sale_date, d.group_price_fen, d.group_threshold,
                  d.per_shopper_limit, p.id AS product_id, p.name, p.category,
                  sd.pickup_date, sd.cutoff_at
    ), mine AS (
        INSERT INTO catalog.shopper_deal_quantities AS q (deal_id, shopper_id, quantity)
        SELECT d.id, :shopper, :q FROM d
        ON CONFLICT (deal_id, shopper_id) DO UPDATE SET quantity = q.quantity + EXCLUDED.quantity
        WHERE q.quantity + EXCLUDED.quantity
            <= (SELECT l.per_shopper_limit FROM catalog.deals l WHERE l.id = EXCLUDED.deal_id)
        RETURNING quantity
    ), held AS (
        -- not conditional on the others: a retry must meet the key even when the first
        -- took the last units or the shopper's whole limit (only on the deal existing)
        INSERT INTO catalog.reservations (order_id, deal_id, shopper_id, quantity, status,
            created_at)
        SELECT :o, x.id, :shopper, :q, 'held', :now FROM catalog.deals x WHERE x.id = :id
    )
    SELECT d.*, EXISTS (SELECT 1 FROM mine) AS within_limit FROM d
""")


async def _why_not_reserved(s: AsyncConnection, deal_id: int, q: int) -> Exception:
    row = (
        await s.execute(
            text(
                "SELECT d.stock, d.reserved, d.per_shopper_limit, sd.status, sd.cutoff_at "
                "FROM catalog.deals d JOIN catalog.sale_days sd ON sd.sale_date = d.sale_date "
                "WHERE d.id = :id"
            ),
            {"id": deal_id},
        )
    ).first()
    if row is None:
        return DealNotFound(f"deal {deal_id} does not exist")
    if row.status != SaleDayStatus.published:
        return SaleDayNotOpen(f"deal {deal_id}'s sale day is {row.status}")
    if row.cutoff_at <= clock.now():
        return PastCutoff(f"deal {deal_id}'s sale day is past its cutoff")
    if q > row.per_shopper_limit:
        return PerShopperLimit(f"at most {row.per_shopper_limit} per shopper for deal {deal_id}")
    return OutOfStock(
        f"deal {deal_id} has {row.stock - row.reserved} left",
        deal_id=deal_id,
        remaining=row.stock - row.reserved,
    )


class AlreadyReserved(Exception):
    """This order id holds stock already: the request is a retry (`existing`)."""


async def reserve(
    s: AsyncConnection, order_id: int, shopper_id: int, items: list[ReservationItemIn]
) -> dict:
    """Hold stock for every line of one order, or for none (the caller's transaction).

    Raises AlreadyReserved for an order id that holds stock already; the caller rolls
    back and answers with `existing`, as the first time."""
    wanted: dict[int, int] = defaultdict(int)
    for item in items:
        wanted[item.deal_id] += item.quantity
    now = clock.now()
    rows, quantities = [], []
    for deal_id in sorted(wanted):  # one lock order for every order: no deadlocks
        q = wanted[deal_id]
        params = {"id": deal_id, "q": q, "now": now, "o": order_id, "shopper": shopper_id}
        try:
            row = (await s.execute(_RESERVE, params)).first()
        except IntegrityError as e:
            if "reservations_pkey" in str(e.orig):
                raise AlreadyReserved(order_id) from e
            raise
        if row is None:
            raise await _why_not_reserved(s, deal_id, q)
        if not row.within_limit:
            raise PerShopperLimit(
                f"at most {row.per_shopper_limit} per shopper for deal "
                f"{deal_id}, across all of your orders",
                deal_id=deal_id,
            )
        rows.append(row)
        quantities.append(q)
    if len({r.sale_date for r in rows}) > 1:
        raise InvalidInput(
            "all items of one order must be from the same sale day", code="mixed_sale_days"
        )
    return _reservation(rows, quantities)


async def existing(s: AsyncConnection, order_id: int) -> dict | None:
    """What an order's hold answered the first time (None: it holds nothing)."""
    rows = (
        await s.execute(
            text(
                "SELECT r.deal_id, r.quantity, d.sale_date, d.group_price_fen, d.group_threshold, "
                "p.id AS product_id, p.name, p.category, sd.pickup_date, sd.cutoff_at "
                "FROM catalog.reservations r JOIN catalog.deals d ON d.id = r.deal_id "
                "JOIN catalog.products p ON p.id = d.product_id "
                "JOIN catalog.sale_days sd ON sd.sale_date = d.sale_date WHERE r.order_id = :o "
                "ORDER BY r.deal_id"
            ),
            {"o": order_id},
        )
    ).all()
    return _reservation(rows, [r.quantity for r in rows]) if rows else None


def _reservation(rows, quantities) -> dict:
    first = rows[0]
    return {
        "sale_date": first.sale_date,
        "pickup_date": first.pickup_date,
        "cutoff_at": first.cutoff_at,
        "lines": [
            {
                "deal_id": getattr(r, "id", None) or r.deal_id,
                "product_id": r.product_id,
                "product_name": r.name,
                "category": r.category,
                "unit_price_fen": r.group_price_fen,
                "quantity": q,
                "group_threshold": r.group_threshold,
            }
            for r, q in zip(rows, quantities, strict=True)
        ],
    }


_RELEASE = text("""
    WITH released AS (
        UPDATE catalog.reservations SET status = 'released'
        WHERE order_id = :o AND status = 'held'
        RETURNING deal_id, shopper_id, quantity
    ), stock AS (
        UPDATE catalog.deals d SET reserved = d.reserved - r.quantity
        FROM released r WHERE d.id = r.deal_id RETURNING d.id
    )
    UPDATE catalog.shopper_deal_quantities q SET quantity = q.quantity - r.quantity
    FROM released r WHERE q.deal_id = r.deal_id AND q.shopper_id = r.shopper_id
""")


async def release_reservation(s: AsyncSession, order_id: int) -> None:
    """Return an unpaid order's stock; a second call finds nothing held and does nothing."""
    await s.execute(_RELEASE, {"o": order_id})


# --- the daily cutoff -----------------------------------------------------------------------


async def close_sale_day(db, day: date) -> dict:
    """Stop orders for the day, have orders apply the cutoff, record each deal's outcome.

    Safe to repeat: a closed day only re-drives the (idempotent) orders cutoff.
    """
    async with db.transaction() as s:
        sale_day = (
            await s.execute(select(SaleDay).where(SaleDay.sale_date == day).with_for_update())
        ).scalar_one_or_none()
        if sale_day is None:
            raise SaleDayNotFound(f"no sale day {day.isoformat()}")
        if sale_day.status == SaleDayStatus.draft:
            raise SaleDayNotOpen(f"sale day {day} was never published")
        await s.execute(
            text(
                "UPDATE catalog.sale_days SET status = 'closed', closed_at = :now "
                "WHERE sale_date = :d AND status = 'published'"
            ),
            {"d": day, "now": clock.now()},
        )
    result = await orders_client.post(f"/internal/sale-days/{day.isoformat()}/cutoff")
    outcomes = {int(o["deal_id"]): o for o in result["deals"]}
    async with db.transaction() as s:
        deals = (await s.execute(select(Deal).where(Deal.sale_date == day))).scalars().all()
        for deal in deals:
            o = outcomes.get(deal.id)
            confirmed = int(o["paid_quantity"]) if o else 0
            # orders has no row for a deal nobody paid for: the same rule decides it here
            outcome = o["outcome"] if o else group_outcome(confirmed, deal.group_threshold)
            await s.execute(
                text(
                    "UPDATE catalog.deals SET outcome = :o, confirmed_quantity = :q "
                    "WHERE id = :id AND outcome = 'open'"
                ),
                {"o": outcome, "q": confirmed, "id": deal.id},
            )
        await s.execute(
            text(
                "UPDATE catalog.sale_days SET cutoff_done_at = :now "
                "WHERE sale_date = :d AND cutoff_done_at IS NULL"
            ),
            {"d": day, "now": clock.now()},
        )
        refreshed = (
            (await s.execute(select(Deal.outcome).where(Deal.sale_date == day))).scalars().all()
        )
    return {
        "date": day,
        "status": SaleDayStatus.closed,
        "deals_succeeded": sum(1 for o in refreshed if o == DealOutcome.succeeded),
        "deals_failed": sum(1 for o in refreshed if o == DealOutcome.failed),
        "orders_confirmed": result["orders_confirmed"],
        "orders_cancelled": result["orders_cancelled"],
        "lines_refunded": result["lines_refunded"],
        "delivery_lists": result["delivery_lists"],
    }


async def days_due_for_cutoff(s: AsyncSession) -> list[date]:
    rows = (
        (
            await s.execute(
                text(
                    "SELECT sale_date FROM catalog.sale_days WHERE (status = 'published' AND cutoff_at <= :now)"
                    " OR (status = 'closed' AND cutoff_done_at IS NULL) ORDER BY sale_date"
                ),
                {"now": clock.now()},
            )
        )
        .scalars()
        .all()
    )
    return list(rows)


async def release_orphaned_reservations(db, grace_minutes: int = 5) -> int:
    """Stock held for an order the orders service never recorded (a crash between the
    reservation and the order's insert) goes back once the reservation is older than an
    unpaid order could live; orders is asked, never assumed."""
    st = get_settings()
    older_than = clock.now() - timedelta(minutes=st.reservation_ttl_minutes + grace_minutes)
    async with db.session() as s:
        candidates = list(
            (
                await s.execute(
                    text(
                        "SELECT DISTINCT order_id FROM catalog.reservations WHERE status = 'held' "
                        "AND created_at < :t ORDER BY order_id LIMIT 1000"
                    ),
                    {"t": older_than},
                )
            ).scalars()
        )
    if not candidates:
        return 0
    known = await orders_client.post("/internal/orders/known", json={"order_ids": candidates})
    orphans = sorted(set(candidates) - set(known["order_ids"]))
    async with db.transaction() as s:
        for order_id in orphans:
            await release_reservation(s, order_id)
    return len(orphans)
