"""Events and jobs the leaders service handles."""

from services.common.events import subscribe

from . import deposit


@subscribe("leaders", "payment.deposit_succeeded")
async def deposit_paid(s, payload: dict, env: dict) -> None:
    await deposit.record_payment(
        s, int(payload["leader_id"]), payload["intent_id"], int(payload["amount_fen"])
    )
