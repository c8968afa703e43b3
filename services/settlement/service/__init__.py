"""Settlement rules: commissions (pending on pickup, released after the after-sales
window, clawed back on refunds), withdrawals and their payouts, statements and the
reconciliation with the payment provider."""

from .commissions import (  # noqa: F401
    apply_refund,
    balance_of,
    commissions_of,
    log,
    record_commissions,
    release_due,
    withdrawn_total,
)
from .reconciliation import (  # noqa: F401
    OUT_OF_SCOPE,
    period,
    reconcile,
)
from .statements import (  # noqa: F401
    STATEMENT_COLUMNS,
    month_bounds,
    statement,
    statement_csv,
)
from .withdrawals import (  # noqa: F401
    BelowMinimum,
    WithdrawalNotFound,
    WithdrawalNotRequested,
    add_working_days,
    approve_withdrawal,
    begin_payout,
    connected_account,
    count_overdue_withdrawals,
    find_transfer,
    get_withdrawal,
    is_overdue,
    list_withdrawals,
    pay_out,
    payout_key,
    record_failed,
    record_paid,
    reject_withdrawal,
    request_withdrawal,
    retry_payouts,
    send_transfer,
)
