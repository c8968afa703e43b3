from gateway.ratelimit import RateLimiter
from gateway.routing import is_public, service_for


def test_internal_routes_are_never_routed():
    assert service_for("internal/reservations") is None
    assert service_for("orders/internal/x") is None
    assert service_for("catalog/INTERNAL/anything") is None


def test_public_paths_go_to_their_service():
    assert service_for("auth/staff/token") == "leaders"
    assert service_for("me/leader") == "leaders"
    assert service_for("payments/webhook") == "orders"
    assert service_for("settlement/me/balance") == "settlement"
    assert service_for("nope/x") is None


def test_only_reads_of_the_catalog_and_sign_in_are_anonymous():
    assert is_public("GET", "catalog/today")
    assert is_public("GET", "catalog/days/2026-01-01")
    assert not is_public("POST", "catalog/days/2026-01-01/publish")
    assert not is_public("GET", "orders")
    assert is_public("POST", "auth/wechat/session")


def test_token_bucket_refuses_past_the_rate_and_refills():
    limiter = RateLimiter(per_minute=60, burst=2)
    assert limiter.take("a", now=0.0) == 0
    assert limiter.take("a", now=0.0) == 0
    wait = limiter.take("a", now=0.0)
    assert 0.9 < wait <= 1.0
    assert limiter.take("b", now=0.0) == 0  # other clients are unaffected
    assert limiter.take("a", now=1.01) == 0
