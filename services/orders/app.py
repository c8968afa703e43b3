from services.common.app import create_service_app
from services.common.payments import get_provider

from .api import routers
from .service import catalog_client, leaders_client


async def _shutdown() -> None:
    await catalog_client.aclose()
    await leaders_client.aclose()
    await get_provider().aclose()


app = create_service_app(
    "orders",
    routers,
    title="Orders",
    description="Group orders, payments, cutoff, delivery and pickup",
    on_shutdown=_shutdown,
)
