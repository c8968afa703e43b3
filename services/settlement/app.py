from services.common.app import create_service_app
from services.common.metrics import WITHDRAWALS_PAST_SLA

from .api import db, routers
from .service import count_overdue_withdrawals


async def _measure() -> None:
    WITHDRAWALS_PAST_SLA.set(await count_overdue_withdrawals(db))


app = create_service_app(
    "settlement",
    routers,
    title="Settlement",
    description="Commissions, the ledger, withdrawals and payouts",
    on_metrics=_measure,
)
