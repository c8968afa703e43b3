from services.common.app import create_service_app

from .api import routers

app = create_service_app(
    "settlement",
    routers,
    title="Settlement",
    description="Commissions, the ledger, withdrawals and payouts",
)
