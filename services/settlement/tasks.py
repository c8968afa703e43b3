"""Settlement's event consumers and jobs."""

from services.common.events import subscribe

from . import service


@subscribe("settlement", "order.picked_up")
async def record_commission_on_pickup(s, payload: dict, env: dict) -> None:
    await service.record_commissions(s, payload)
