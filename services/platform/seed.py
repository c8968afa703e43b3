"""The demo (API.md "Development defaults"), idempotent: running it twice leaves one copy."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from services.catalog import service as catalog
from services.catalog.schemas import DealIn
from services.common.clock import local_today
from services.common.db import get_db
from services.common.settings import get_settings

DEMO_LEADERS = [
    # (dev name, tier, community, address, lat, lng)
    (
        "leader-standard",
        "standard",
        "Jing'an Garden",
        "No. 1 Nanjing W Rd, pickup at the lobby",
        31.2304,
        121.4737,
    ),
    (
        "leader-advanced",
        "advanced",
        "Huangpu Riverside",
        "88 Zhongshan E Rd, shop 3",
        31.2354,
        121.4800,
    ),
    ("leader-core", "core", "People's Square Homes", "200 Xizang M Rd, gate B", 31.2280, 121.4690),
]

DEMO_PRODUCTS = [
    # (sku, name, category, list price, group price, stock, threshold)
    ("FRESH-EGG-30", "Free-range eggs, 30", "fresh", 3990, 2990, 200, 0),
    ("FRESH-TOM-1KG", "Vine tomatoes, 1 kg", "fresh", 1290, 990, 300, 10),
    ("FRESH-PORK-500", "Pork belly, 500 g", "fresh", 3590, 2880, 150, 0),
    ("SNACK-NUTS-7", "Mixed nuts, 7 daily packs", "snacks_drinks", 4990, 3590, 200, 0),
    ("DRINK-TEA-12", "Jasmine green tea, 12 bottles", "snacks_drinks", 4800, 3300, 120, 0),
    ("HOME-TISSUE-24", "Facial tissue, 24 packs", "household", 5990, 3990, 150, 0),
    ("HOME-DETERG-2L", "Laundry detergent, 2 L", "household", 4590, 2990, 100, 0),
    ("BEAUTY-MASK-10", "Hydrating sheet masks, 10", "beauty", 9900, 5900, 80, 0),
]


async def seed_demo() -> dict:
    st = get_settings()
    leaders_db, catalog_db = get_db("leaders"), get_db("catalog")
    async with leaders_db.transaction() as s:
        for name, tier, community, address, lat, lng in DEMO_LEADERS:
            user_id = (
                await s.execute(
                    text(
                        "INSERT INTO leaders.users (external_id, display_name, roles, created_at) "
                        "VALUES (:e, :n, ARRAY['shopper'], now()) ON CONFLICT (external_id) DO UPDATE "
                        "SET display_name = EXCLUDED.display_name RETURNING id"
                    ),
                    {"e": f"dev:{name}", "n": name},
                )
            ).scalar_one()
            await s.execute(
                text(
                    "INSERT INTO leaders.leaders (user_id, status, tier, community_name, pickup_address,"
                    " pickup_hours, phone, group_size, latitude, longitude, created_at, tier_since) "
                    "VALUES (:u, 'active', :t, :c, :a, '08:00-20:00', '13800000000', 300, :lat, :lng, "
                    "now(), now()) ON CONFLICT (user_id) DO NOTHING"
                ),
                {"u": user_id, "t": tier, "c": community, "a": address, "lat": lat, "lng": lng},
            )

    day = local_today(st.timezone) + timedelta(days=1)
    async with catalog_db.transaction() as s:
        for sku, name, category, list_price, _, _, _ in DEMO_PRODUCTS:
            await s.execute(
                text(
                    "INSERT INTO catalog.products (sku, name, category, list_price_fen, description, "
                    "image_url, created_at) VALUES (:sku, :n, :c, :p, '', '', now()) "
                    "ON CONFLICT (sku) DO NOTHING"
                ),
                {"sku": sku, "n": name, "c": category, "p": list_price},
            )
        sale_day = await catalog.ensure_sale_day(s, day)
        if sale_day.status == "draft":
            ids: dict[str, int] = dict(
                (await s.execute(text("SELECT sku, id FROM catalog.products"))).all()
            )
            have = set(
                (
                    await s.execute(
                        text("SELECT product_id FROM catalog.deals WHERE sale_date = :d"),
                        {"d": day},
                    )
                ).scalars()
            )
            for sku, _, _, _, price, stock, threshold in DEMO_PRODUCTS:
                if ids[sku] not in have:
                    await catalog.add_deal(
                        s,
                        day,
                        DealIn(
                            product_id=ids[sku],
                            group_price_fen=price,
                            stock=stock,
                            per_shopper_limit=5,
                            group_threshold=threshold,
                        ),
                    )
            await catalog.publish_sale_day(s, day)
    return {"sale_date": day.isoformat(), "leaders": [n for n, *_ in DEMO_LEADERS]}
