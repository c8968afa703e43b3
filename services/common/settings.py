"""Every setting of the platform, read from the environment.

Defaults work on a bare development machine; `ENVIRONMENT=production` refuses the
development-only ones (dev identity provider, default secrets, default staff password).
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789"
DEV_SERVICE_TOKEN = "dev-only-service-token"
DEV_WEBHOOK_SECRET = "whsec_dev_only"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"

    # --- infrastructure -------------------------------------------------------------
    # One PostgreSQL holds one schema per service; each service may point elsewhere.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/groupbuy"
    catalog_database_url: str | None = None
    orders_database_url: str | None = None
    leaders_database_url: str | None = None
    settlement_database_url: str | None = None
    db_pool_size: int = 5
    db_max_overflow: int = 5
    # each worker process keeps small pools: it runs one task at a time
    worker_db_pool_size: int = 2

    celery_broker_url: str = "redis://127.0.0.1:6379/0"
    celery_queue: str = "groupbuy"

    # --- where each piece listens (the gateway and the services find each other here)
    gateway_port: int = 8000
    catalog_url: str = "http://127.0.0.1:8101"
    orders_url: str = "http://127.0.0.1:8102"
    leaders_url: str = "http://127.0.0.1:8103"
    settlement_url: str = "http://127.0.0.1:8104"
    # how long the gateway / a service waits for a peer before answering 503 / 504
    peer_connect_timeout_s: float = 0.5
    peer_read_timeout_s: float = 10.0

    # --- security ----------------------------------------------------------------------
    jwt_secret: str = DEV_JWT_SECRET
    jwt_issuer: str = "groupbuy"
    jwt_ttl_s: int = 7 * 24 * 3600
    service_token: str = DEV_SERVICE_TOKEN
    staff_username: str = "staff"
    staff_password: str = "staff"
    dev_identity_provider: bool = True
    wechat_code2session_url: str = "https://api.weixin.qq.com/sns/jscode2session"
    wechat_app_id: str = ""
    wechat_app_secret: str = ""
    # per client (token subject, else IP) and a stricter one for login routes
    rate_limit_per_minute: int = 1200
    auth_rate_limit_per_minute: int = 60
    pickup_rate_limit_per_minute: int = 30
    max_body_bytes: int = 256 * 1024

    # --- payment provider (Stripe-compatible) -------------------------------------------
    payments_api_base: str = "http://127.0.0.1:8420"
    payments_api_key: str = "sk_test_groupbuy"
    payments_webhook_secret: str = DEV_WEBHOOK_SECRET
    payments_webhook_tolerance_s: int = 300
    payments_timeout_s: float = 10.0
    currency: str = "CNY"

    # --- the business's defaults (DOMAIN.md) --------------------------------------------
    timezone: str = "Asia/Shanghai"
    cutoff_time: str = "23:00"
    pickup_days_after: int = 1
    min_deals_per_day: int = 8
    max_deals_per_day: int = 10
    reservation_ttl_minutes: int = 15
    after_sales_window_hours: int = 48
    commission_release_days: int = 7
    rate_preparation: Decimal = Decimal("0")
    rate_standard: Decimal = Decimal("0.12")
    rate_advanced: Decimal = Decimal("0.14")
    rate_core: Decimal = Decimal("0.16")
    min_group_size: int = 100
    nearby_radius_km: float = 5.0
    deposit_fen: int = 16800
    # leaders' tiers: promotion bars over a rolling window, trial, elimination
    tier_window_days: int = 30
    demotion_periods: int = 2
    trial_days: int = 30
    bar_preparation_completed_orders: int = 10
    bar_standard_gmv_fen: int = 3_000_000
    bar_standard_buyers: int = 50
    bar_standard_complaint_rate: Decimal = Decimal("0.01")
    bar_standard_trainings: int = 4
    bar_advanced_gmv_fen: int = 8_000_000
    bar_advanced_buyers: int = 150
    bar_advanced_complaint_rate: Decimal = Decimal("0.005")
    complaint_suspend_limit: int = 3
    complaint_window_days: int = 30
    training_sessions_per_week: int = 2
    share_link_base: str = "https://groupbuy.example/join?invite="
    min_withdrawal_fen: int = 1000
    # the payout SLA: requests older than this many working days are flagged to staff
    payout_sla_working_days: int = 2

    # --- events and schedules -------------------------------------------------------------
    outbox_sweep_interval_s: float = 5.0
    # a broker found restarted gets the events published this recently again (consumers'
    # inboxes make the repeats no-ops)
    outbox_replay_window_s: float = 3600.0
    reservation_expiry_interval_s: float = 60.0
    completion_interval_s: float = 60.0
    cutoff_check_interval_s: float = 60.0
    event_max_retries: int = 20
    # a task a killed worker had taken stays invisible in the broker this long before
    # another worker takes it again; long enough for the longest task and retry countdown
    # (60 s), short enough that a SIGKILL delays an event by minutes, not an hour
    broker_visibility_timeout_s: float = 300.0
    # how often a live worker looks for such tasks
    broker_restore_interval_s: float = 10.0
    # a worker refreshes its liveness mark this often divided by 3; a mark left to expire
    # (the worker was killed) makes the sweep replay recent events (events.workers_lost)
    worker_liveness_ttl_s: float = 30.0
    # the evaluation records one result per leader per day, so running hourly is safe
    tier_evaluation_interval_s: float = 3600.0
    commission_release_interval_s: float = 600.0
    commission_release_batch: int = 5000
    # an approved payout with no recorded result after this long is retried
    payout_retry_after_s: int = 300
    payout_retry_interval_s: float = 300.0
    # owed refunds the provider has not taken yet (unreachable, answer lost) are sent
    # again this often, each with its key `refund:<id>`
    refund_retry_interval_s: float = 30.0
    reconciliation_interval_s: float = 86400.0

    # the worker serves its tasks' counters here (0: off); needs PROMETHEUS_MULTIPROC_DIR
    worker_metrics_port: int = 0

    log_level: str = "INFO"
    log_json: bool = True

    demo_seed: bool = True
    data_dir: str = ".data"

    @model_validator(mode="after")
    def _refuse_dev_values_in_production(self) -> Settings:
        if self.environment == "production":
            bad = []
            if self.jwt_secret == DEV_JWT_SECRET:
                bad.append("JWT_SECRET")
            if self.service_token == DEV_SERVICE_TOKEN:
                bad.append("SERVICE_TOKEN")
            if self.payments_webhook_secret == DEV_WEBHOOK_SECRET:
                bad.append("PAYMENTS_WEBHOOK_SECRET")
            if self.staff_password == "staff":
                bad.append("STAFF_PASSWORD")
            if self.dev_identity_provider:
                bad.append("DEV_IDENTITY_PROVIDER (must be false)")
            if bad:
                raise ValueError(
                    "production settings still hold development values: " + ", ".join(bad)
                )
        return self

    def database_url_for(self, service: str) -> str:
        url: str | None = getattr(self, f"{service}_database_url", None)
        return url or self.database_url

    def service_url(self, service: str) -> str:
        url: str = getattr(self, f"{service}_url")
        return url

    def rate_for_tier(self, tier: str) -> Decimal:
        rate: Decimal = getattr(self, f"rate_{tier}")
        return rate


class _Holder:
    settings: Settings | None = None


@lru_cache(maxsize=1)
def _load() -> Settings:
    return Settings()


def get_settings() -> Settings:
    return _Holder.settings or _load()


def override_settings(settings: Settings | None) -> None:
    """Tests and the CLI may install settings built in code."""
    _Holder.settings = settings


SERVICES = ("catalog", "orders", "leaders", "settlement")
