"""Group-order rules, one module per concern: the kernel (`core`), placing, payment,
refunds, the cutoff, delivery and pickup, after-sales.

Every change of an order's status goes through `transition`, one conditional UPDATE
(`... WHERE status IN (<allowed from>)`), so two racing requests can never both move
the same order, and nothing reads a status and writes it back.
"""

from .after_sales import (  # noqa: F401
    AfterSalesClosed,
    authorize_after_sales_decision,
    complete_orders_past_window,
    decide_after_sales,
    list_after_sales,
    load_after_sales,
    request_after_sales,
)
from .core import (  # noqa: F401
    PEER_RETRIES,
    SCHEMA,
    TRANSITIONS,
    LeaderSuspended,
    NotYourOrder,
    OrderNotFound,
    OrderNotPayable,
    S,
    authorize_read,
    catalog_client,
    existing_order_ids,
    leaders_client,
    lines_of,
    list_orders,
    load_order,
    log,
    transition,
)
from .cutoff import (  # noqa: F401
    apply_cutoff,
)
from .leaders import apply as apply_leader_copy  # noqa: F401
from .leaders import leader_of  # noqa: F401
from .payment import (  # noqa: F401
    handle_provider_event,
    new_pickup_code,
    pay_order,
    record_payment,
)
from .pickup import (  # noqa: F401
    delivery_lists,
    mark_delivery_received,
    redeem_pickup,
    sorting_list,
)
from .placing import (  # noqa: F401
    IdBlocks,
    cancel_unpaid,
    expire_unpaid_orders,
    order_id_blocks,
    place_order,
)
from .refunds import (  # noqa: F401
    execute_pending_refunds,
    refund_in_background,
)
