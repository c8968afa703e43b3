"""Every public route x every role gets the status class its rules document; the table
must name every operation of the merged OpenAPI, so a new route cannot slip in untested.

Probes are chosen so that a permitted caller changes nothing (an invalid body, an id that
does not exist, a far-away day): the point is who gets past authorisation, not the rule
behind it. Ownership (IDOR) with real resources is asserted in test_idor.py.
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import problem_of

ROLES = ("anonymous", "alice", "bob", "leader", "other_leader", "staff")
SHOPPERS = {"alice", "bob", "leader", "other_leader"}  # a leader signs in as a shopper too
LEADERS = {"leader", "other_leader"}
NOPE = 999_999  # an id that exists nowhere
FAR_DAY = "2031-01-07"


def rule(allowed: set[str], *, public: bool = False, denied: str = "403") -> dict[str, str]:
    """The expected class per role: ok (past authorisation), 401, 403, or denied (403/404)."""
    out = {}
    for role in ROLES:
        if role in allowed or public:
            out[role] = "ok"
        elif role == "anonymous":
            out[role] = "401"
        else:
            out[role] = denied
    return out


PUBLIC = rule(set(), public=True)
ANY = rule(set(ROLES) - {"anonymous"})
STAFF = rule({"staff"})
SHOPPER = rule(SHOPPERS)
LEADER = rule(LEADERS)
LEADER_OR_STAFF = rule(LEADERS | {"staff"})


def matrix(w: dict) -> dict[tuple[str, str], tuple[dict, dict]]:
    """(method, template) -> (expected per role, request probe)."""
    order = w["orders"]["alice"]["id"]
    lid = w["leader"].user["leader_id"]
    day = w["day"].isoformat()
    return {
        # catalog
        ("POST", "/catalog/products"): (STAFF, {"json": {}}),
        ("GET", "/catalog/products"): (STAFF, {}),
        ("POST", "/catalog/days/{day}/deals"): (
            STAFF,
            {"path": f"/catalog/days/{day}/deals", "json": {}},
        ),
        ("POST", "/catalog/days/{day}/deals/{deal_id}/stock"): (
            STAFF,
            {"path": f"/catalog/days/{day}/deals/{NOPE}/stock", "json": {}},
        ),
        ("POST", "/catalog/days/{day}/publish"): (
            STAFF,
            {"path": f"/catalog/days/{FAR_DAY}/publish"},
        ),
        ("POST", "/catalog/days/{day}/close"): (STAFF, {"path": f"/catalog/days/{FAR_DAY}/close"}),
        ("GET", "/catalog/today"): (PUBLIC, {}),
        ("GET", "/catalog/days/{day}"): (PUBLIC, {"path": f"/catalog/days/{day}"}),
        # orders
        ("POST", "/orders"): (SHOPPER, {"json": {}}),
        ("GET", "/orders"): (ANY, {}),
        ("GET", "/orders/delivery-lists"): (
            {**LEADER_OR_STAFF, "alice": "403", "bob": "403"},
            {"params": {"pickup_date": day}},
        ),
        ("POST", "/orders/delivery-lists/{list_id}/received"): (
            LEADER,
            {"path": f"/orders/delivery-lists/{NOPE}/received"},
        ),
        ("GET", "/orders/sorting-list"): (STAFF, {"params": {"pickup_date": day}}),
        ("POST", "/orders/pickups"): (LEADER, {"json": {}}),
        ("GET", "/orders/after-sales"): (ANY, {}),
        ("POST", "/orders/after-sales/{request_id}/approve"): (
            LEADER_OR_STAFF,
            {"path": f"/orders/after-sales/{NOPE}/approve"},
        ),
        ("POST", "/orders/after-sales/{request_id}/reject"): (
            LEADER_OR_STAFF,
            {"path": f"/orders/after-sales/{NOPE}/reject", "json": {}},
        ),
        # alice's order: her, her leader and staff; bob and the other leader are refused
        ("GET", "/orders/{order_id}"): (
            {**rule({"alice", "leader", "staff"}, denied="denied")},
            {"path": f"/orders/{order}"},
        ),
        ("POST", "/orders/{order_id}/pay"): (
            SHOPPER,
            {"path": f"/orders/{order}/pay", "json": {"card": 1}},
        ),
        ("POST", "/orders/{order_id}/cancel"): (SHOPPER, {"path": f"/orders/{NOPE}/cancel"}),
        ("POST", "/orders/{order_id}/after-sales"): (
            SHOPPER,
            {"path": f"/orders/{order}/after-sales", "json": {}},
        ),
        ("POST", "/payments/webhook"): (PUBLIC, {"json": {}}),
        # leaders: identity
        ("POST", "/auth/staff/token"): (PUBLIC, {"data": {}}),
        ("POST", "/auth/wechat/session"): (PUBLIC, {"json": {}}),
        ("GET", "/me"): (ANY, {}),
        ("PUT", "/me/leader"): (SHOPPER, {"json": {}}),
        # leaders: programme
        ("POST", "/leaders/applications"): (SHOPPER, {"json": {}}),
        ("GET", "/leaders/applications"): (STAFF, {}),
        ("POST", "/leaders/applications/{app_id}/approve"): (
            STAFF,
            {"path": f"/leaders/applications/{NOPE}/approve"},
        ),
        ("POST", "/leaders/applications/{app_id}/reject"): (
            STAFF,
            {"path": f"/leaders/applications/{NOPE}/reject", "json": {}},
        ),
        ("GET", "/leaders/me"): (ANY, {}),
        ("POST", "/leaders/me/deposit"): (LEADER, {"json": {"payment_method": ""}}),
        ("GET", "/leaders/me/deposit/history"): (LEADER, {}),
        ("GET", "/leaders/{leader_id}/deposit/history"): (
            rule({"leader", "staff"}),
            {"path": f"/leaders/{lid}/deposit/history"},
        ),
        ("POST", "/leaders/{leader_id}/deposit/deductions"): (
            STAFF,
            {"path": f"/leaders/{lid}/deposit/deductions", "json": {}},
        ),
        ("POST", "/leaders/{leader_id}/deposit/refund"): (
            STAFF,
            {"path": f"/leaders/{NOPE}/deposit/refund"},
        ),
        ("POST", "/leaders/{leader_id}/suspend"): (
            STAFF,
            {"path": f"/leaders/{lid}/suspend", "json": {}},
        ),
        ("POST", "/leaders/{leader_id}/reinstate"): (
            STAFF,
            {"path": f"/leaders/{lid}/reinstate", "json": {}},
        ),
        ("POST", "/leaders/{leader_id}/terminate"): (
            STAFF,
            {"path": f"/leaders/{lid}/terminate", "json": {}},
        ),
        ("POST", "/leaders/training/sessions"): (STAFF, {"json": {}}),
        ("GET", "/leaders/training/sessions"): (ANY, {}),
        ("POST", "/leaders/training/sessions/{session_id}/attendance"): (
            STAFF,
            {"path": f"/leaders/training/sessions/{NOPE}/attendance", "json": {}},
        ),
        ("POST", "/leaders/complaints"): (SHOPPER, {"json": {}}),
        ("GET", "/leaders/complaints"): (LEADER_OR_STAFF, {}),
        ("POST", "/leaders/complaints/{complaint_id}/resolve"): (
            STAFF,
            {"path": f"/leaders/complaints/{NOPE}/resolve", "json": {}},
        ),
        ("POST", "/leaders/evaluations/run"): (STAFF, {"json": {"leader_ids": "all"}}),
        ("GET", "/leaders/{leader_id}/tier-history"): (
            rule({"leader", "staff"}),
            {"path": f"/leaders/{lid}/tier-history"},
        ),
        ("POST", "/leaders/{leader_id}/handover"): (
            STAFF,
            {"path": f"/leaders/{lid}/handover", "json": {}},
        ),
        ("GET", "/leaders/me/invite"): (LEADER, {}),
        ("POST", "/leaders/join"): (SHOPPER, {"json": {}}),
        ("GET", "/leaders/me/dashboard"): (LEADER, {}),
        ("GET", "/leaders"): (STAFF, {}),
        ("GET", "/leaders/nearby"): (PUBLIC, {}),
        ("GET", "/leaders/{leader_id}"): (STAFF, {"path": f"/leaders/{lid}"}),
        # settlement
        ("GET", "/settlement/me/balance"): (LEADER, {}),
        ("GET", "/settlement/me/commissions"): (LEADER, {}),
        ("GET", "/settlement/me/statement"): (LEADER, {"params": {"month": "2031-01"}}),
        ("POST", "/settlement/withdrawals"): (LEADER, {"json": {}}),
        ("GET", "/settlement/withdrawals"): (LEADER_OR_STAFF, {}),
        ("POST", "/settlement/withdrawals/{withdrawal_id}/approve"): (
            STAFF,
            {"path": f"/settlement/withdrawals/{NOPE}/approve"},
        ),
        ("POST", "/settlement/withdrawals/{withdrawal_id}/reject"): (
            STAFF,
            {"path": f"/settlement/withdrawals/{NOPE}/reject", "json": {}},
        ),
        ("POST", "/settlement/jobs/release"): (STAFF, {}),
        ("GET", "/settlement/reconciliation"): (STAFF, {}),
    }


async def test_the_matrix_names_every_public_operation(gateway_url, world):
    async with httpx.AsyncClient() as c:
        doc = (await c.get(f"{gateway_url}/openapi.json")).json()
    published = {
        (method.upper(), path.removeprefix("/api/v1"))
        for path, ops in doc["paths"].items()
        for method in ops
        if method in {"get", "post", "put", "patch", "delete"}
    }
    table = set(matrix(world))
    assert published - table == set(), "routes without an authorisation rule in the matrix"
    assert table - published == set(), "rules for routes that no longer exist"


def _matches(expected: str, status: int) -> bool:
    if expected == "ok":
        return status < 500 and status not in (401, 403)
    if expected == "denied":
        return status in (403, 404)
    return status == int(expected)


async def test_every_route_for_every_role(gateway_url, world):
    tokens = {
        "anonymous": None,
        "alice": world["alice"].token,
        "bob": world["bob"].token,
        "leader": world["leader"].token,
        "other_leader": world["other_leader"].token,
        "staff": world["ops"].token,
    }
    wrong: list[str] = []
    checks = 0
    async with httpx.AsyncClient(base_url=gateway_url, timeout=15) as c:
        for (method, template), (expected, probe) in matrix(world).items():
            for role in ROLES:
                headers = {"authorization": f"Bearer {tokens[role]}"} if tokens[role] else {}
                r = await c.request(
                    method,
                    probe.get("path", template),
                    headers=headers,
                    json=probe.get("json"),
                    data=probe.get("data"),
                    params=probe.get("params"),
                )
                checks += 1
                if not _matches(expected[role], r.status_code):
                    wrong.append(f"{method} {template} as {role}: {r.status_code} {r.text[:120]}")
                elif r.status_code >= 400:
                    problem_of(r)
    assert checks == len(matrix(world)) * len(ROLES)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "path",
    [
        "/internal/shoppers/1/leader",
        "/leaders/internal/shoppers/1/leader",
        "/catalog/internal/reservations",
        "/orders/internal/sale-days/2030-01-01/cutoff",
        "/%69nternal/shoppers/1/leader",
        "/orders/%2e%2e/internal/sale-days/2030-01-01/cutoff",
        "/INTERNAL/shoppers/1/leader",
        "/nosuchservice/anything",
    ],
)
async def test_internal_routes_are_404_through_the_gateway(path, gateway_url, world):
    async with httpx.AsyncClient(base_url=gateway_url) as c:
        for method in ("GET", "POST"):
            r = await c.request(method, path, headers=world["ops"]._headers())
            assert r.status_code == 404, (method, path, r.text)
            problem_of(r)


INTERNAL = [
    ("leaders", "GET", "/internal/shoppers/1/leader", None),
    ("catalog", "POST", "/internal/reservations", {"order_id": 1, "shopper_id": 1, "items": []}),
    ("catalog", "POST", "/internal/reservations/1/release", None),
    ("orders", "POST", "/internal/sale-days/2031-01-07/cutoff", None),
]


@pytest.mark.parametrize(("service", "method", "path", "body"), INTERNAL)
async def test_internal_routes_refuse_a_missing_or_wrong_service_token(
    service, method, path, body, platform, world
):
    async with httpx.AsyncClient(base_url=platform.service_url(service)) as c:
        for headers in (
            {},
            {"x-service-token": "guess"},
            {"x-service-token": ""},
            # a staff JWT is not a service token
            {"authorization": f"Bearer {world['ops'].token}"},
        ):
            r = await c.request(method, path, headers=headers, json=body)
            assert r.status_code == 403, (headers, r.text)
            assert problem_of(r)["code"] == "service_token_required"
