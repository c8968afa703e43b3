"""The event contracts (services/contracts/events.py): every topic a producer emits or a
consumer subscribes to has a model, producers write only models, and the JSON a model
writes is the JSON the producers wrote before there were models."""

from __future__ import annotations

import ast
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from services.contracts import events as contracts
from services.contracts.events import (
    TOPICS,
    Event,
    LeaderTierChanged,
    OrderCancelled,
    OrderPickedUp,
    OrderRefunded,
)

SERVICES = Path(__file__).resolve().parents[2] / "services"
# the one module that may write an outbox row from a bare dict: the kernel's primitive
KERNEL = SERVICES / "common" / "events.py"
_OUTBOX_INSERT = re.compile(r"INSERT INTO \S*outbox\b", re.IGNORECASE)


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(SERVICES.rglob("*.py"))]


def _called_name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def test_every_model_is_registered_under_its_own_topic():
    models = [
        m
        for m in vars(contracts).values()
        if isinstance(m, type) and issubclass(m, Event) and "topic" in vars(m)
    ]
    assert sorted(m.topic for m in models) == sorted(TOPICS)
    for model in models:
        assert TOPICS[model.topic] is model


def test_producers_emit_only_registered_models():
    """No producer builds a payload by hand: the untyped `emit` and outbox SQL stay in the
    kernel, and every model a service constructs is in TOPICS."""
    registered = {m.__name__ for m in TOPICS.values()}
    emitted: set[str] = set()
    for path, tree in _modules():
        if path == KERNEL or path.is_relative_to(SERVICES / "contracts"):
            continue
        assert not _OUTBOX_INSERT.search(path.read_text()), f"{path} writes outbox rows itself"
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _called_name(node)
                assert name not in ("emit", "envelope"), f"{path}:{node.lineno} emits a bare dict"
                model = vars(contracts).get(name)
                if isinstance(model, type) and issubclass(model, Event) and model is not Event:
                    emitted.add(name)
    # every model a producer builds is registered, and every registered model is built
    assert emitted == registered


def test_every_subscribed_topic_has_a_model():
    subscribed = set()
    for _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called_name(node) == "subscribe":
                if len(node.args) == 2 and isinstance(node.args[1], ast.Constant):
                    subscribed.add(node.args[1].value)
    assert subscribed and subscribed <= set(TOPICS), subscribed - set(TOPICS)


def test_the_contract_names_the_services_statuses_and_tiers():
    from services.leaders.models import LeaderStatus, Tier

    assert set(get_args(contracts.LeaderStatus)) == {s.value for s in LeaderStatus}
    assert set(get_args(contracts.LeaderTier)) == {t.value for t in Tier}


def test_payloads_keep_the_json_the_producers_always_wrote():
    at = datetime(2026, 3, 5, 2, 0, 0, 123456, tzinfo=UTC)
    picked = OrderPickedUp(
        order_id=7,
        shopper_id=8,
        leader_id=9,
        leader_tier="standard",
        commission_rate=Decimal("0.1200"),  # a Numeric(5, 4) column
        sale_date=date(2026, 3, 4),
        picked_up_at=at,
        total_fen=1980,
        refunded_fen=0,
        lines=[{"line_id": 1, "deal_id": 2, "base_fen": 1980}],
    )
    assert picked.model_dump(mode="json") == {
        "order_id": 7,
        "shopper_id": 8,
        "leader_id": 9,
        "leader_tier": "standard",
        "commission_rate": "0.1200",
        "sale_date": "2026-03-04",
        "picked_up_at": at.isoformat(),  # "+00:00", not pydantic's "Z"
        "total_fen": 1980,
        "refunded_fen": 0,
        "lines": [{"line_id": 1, "deal_id": 2, "base_fen": 1980}],
    }
    # a missed threshold refunds whole lines (no quantity); after-sales claims units
    refund = OrderRefunded(
        order_id=7,
        refund_id=3,
        leader_id=9,
        reason="group_threshold_missed",
        amount_fen=1500,
        lines=[{"line_id": 1, "amount_fen": 1500}, {"line_id": 2, "quantity": 1, "amount_fen": 0}],
    )
    assert refund.model_dump(mode="json")["lines"] == [
        {"line_id": 1, "amount_fen": 1500},
        {"line_id": 2, "quantity": 1, "amount_fen": 0},
    ]
    for model in (picked, refund):
        again = type(model).model_validate(model.model_dump(mode="json"))
        assert again == model


def test_a_tier_change_carries_its_metrics_and_checks_as_written():
    metrics = {
        "metrics": {
            "gmv_fen": 100_000,
            "buyers": 12,
            "orders": 30,
            "completed_orders": 28,
            "upheld_complaints": 0,
            "trainings": 1,
            "onboarding_done": True,
            "deposit_paid": True,
            "complaint_rate": "0.0000",
        },
        "checks": [
            {"name": "gmv_fen", "value": 100_000, "required": 80_000, "met": True},
            {"name": "complaint_rate_below", "value": "0", "required": "0.01", "met": True},
            {"name": "deposit_paid", "value": True, "required": True, "met": True},
        ],
        "window_days": 30,
    }
    change = LeaderTierChanged(
        leader_id=4,
        from_tier="standard",
        to_tier="advanced",
        direction="promotion",
        evaluation_date=date(2026, 3, 5),
        commission_rate=Decimal("0.14"),
        metrics=metrics,
        status="active",
        tier="advanced",
        version=3,
    )
    out = change.model_dump(mode="json")
    assert out["metrics"] == metrics  # bools stay bools, text stays text
    assert (out["evaluation_date"], out["commission_rate"]) == ("2026-03-05", "0.14")


def test_an_unknown_or_missing_key_and_an_unknown_reason_fail():
    with pytest.raises(ValidationError, match="extra"):
        OrderCancelled.model_validate({"order_id": 1, "reason": "expired", "note": "x"})
    with pytest.raises(ValidationError, match="reason"):
        OrderCancelled.model_validate({"order_id": 1})
    with pytest.raises(ValidationError, match="reason"):
        OrderCancelled.model_validate({"order_id": 1, "reason": "bored"})
