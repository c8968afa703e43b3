from services.common.app import create_service_app

from .api import routers
from .service import orders_client


async def _shutdown() -> None:
    await orders_client.aclose()


app = create_service_app(
    "catalog",
    routers,
    title="Catalog",
    description="Products, daily deals, stock and the daily cutoff",
    on_shutdown=_shutdown,
)
