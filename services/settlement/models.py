"""Settlement tables: commissions and the append-only double-entry ledger."""

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, Column, Index, Numeric
from sqlmodel import Field, SQLModel

from services.common.models import plumbing_tables, ts_field

SCHEMA = "settlement"
plumbing_tables(SCHEMA)


class CommissionStatus(StrEnum):
    pending = "pending"
    available = "available"
    # fully clawed back before release: nothing left to release
    reversed = "reversed"


class Commission(SQLModel, table=True):
    """One leader's commission on one order line (DOMAIN.md: "Commission per order line")."""

    __tablename__ = "commissions"
    __table_args__ = (
        Index("ix_commissions_leader", "leader_id", "id"),
        Index(
            "ix_commissions_release", "available_at", "id", postgresql_where="status = 'pending'"
        ),
        CheckConstraint("refunded_fen BETWEEN 0 AND base_fen", name="refund_within_base"),
        CheckConstraint("reversed_fen BETWEEN 0 AND amount_fen", name="reversal_within_amount"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    order_line_id: int = Field(unique=True)
    order_id: int = Field(index=True)
    leader_id: int
    leader_tier: str = Field(max_length=16)
    base_fen: int
    rate: Decimal = Field(sa_column=Column(Numeric(5, 4), nullable=False))
    amount_fen: int
    # after-sales refunds: base refunded so far and the commission clawed back for them
    refunded_fen: int = Field(default=0)
    reversed_fen: int = Field(default=0)
    status: str = Field(default=CommissionStatus.pending, max_length=16)
    picked_up_at: datetime = ts_field()
    available_at: datetime = ts_field()
    released_at: datetime | None = ts_field(nullable=True)
    created_at: datetime = ts_field(default_now=True)


class Account(SQLModel, table=True):
    """A ledger account. `balance_fen` is maintained in the same transaction as the entries
    that move it, and the CHECK makes a negative leader balance impossible."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("allow_negative OR balance_fen >= 0", name="non_negative_balance"),
        # a receivable is what the leader owes: debit-normal, so never above zero
        CheckConstraint("kind <> 'receivable' OR balance_fen <= 0", name="receivable_is_debt"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=100, unique=True)
    leader_id: int | None = Field(default=None, index=True)
    kind: str = Field(max_length=32)
    currency: str = Field(default="CNY", max_length=3)
    allow_negative: bool = Field(default=False)
    # platform accounts sum every commission ever paid: past 2^31 fen (21M CNY) quickly
    balance_fen: int = Field(default=0, sa_type=BigInteger)


class LedgerTransaction(SQLModel, table=True):
    __tablename__ = "ledger_transactions"
    __table_args__ = ({"schema": SCHEMA},)

    id: int | None = Field(default=None, primary_key=True)
    # what caused it, e.g. `commission:<line id>`: posting the same reference twice is a no-op
    reference: str = Field(max_length=200, unique=True)
    kind: str = Field(max_length=32)
    memo: str = Field(default="", max_length=500)
    created_at: datetime = ts_field(default_now=True)


class LedgerEntry(SQLModel, table=True):
    """Append-only: never updated or deleted (a trigger refuses it); corrections are new entries."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_account", "account_id", "id"),
        CheckConstraint("amount_fen <> 0", name="non_zero"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    transaction_id: int = Field(foreign_key=f"{SCHEMA}.ledger_transactions.id", index=True)
    account_id: int = Field(foreign_key=f"{SCHEMA}.accounts.id")
    amount_fen: int = Field(sa_type=BigInteger)
    currency: str = Field(default="CNY", max_length=3)
    created_at: datetime = ts_field(default_now=True)


class CommissionRefund(SQLModel, table=True):
    """One refund of one commissioned line, applied once however often the event arrives."""

    __tablename__ = "commission_refunds"
    __table_args__ = ({"schema": SCHEMA},)

    refund_id: int = Field(primary_key=True)
    order_line_id: int = Field(primary_key=True)
    # null while an after-sales refund waits for its (late) pickup event
    commission_id: int | None = Field(default=None, index=True)
    amount_fen: int
    clawback_fen: int
    created_at: datetime = ts_field(default_now=True)


class WithdrawalStatus(StrEnum):
    requested = "requested"
    approved = "approved"
    paid = "paid"
    failed = "failed"
    rejected = "rejected"


class Withdrawal(SQLModel, table=True):
    __tablename__ = "withdrawals"
    __table_args__ = (
        Index("ix_withdrawals_leader", "leader_id", "id"),
        Index("ix_withdrawals_status", "status", "id"),
        CheckConstraint("amount_fen > 0", name="positive_amount"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True)
    leader_id: int
    amount_fen: int
    status: str = Field(default=WithdrawalStatus.requested, max_length=16)
    reason: str | None = Field(default=None, max_length=500)
    decided_by: int | None = None
    created_at: datetime = ts_field(default_now=True)
    decided_at: datetime | None = ts_field(nullable=True)
    # written before the provider is called, so a retry knows a transfer may exist
    payout_started_at: datetime | None = ts_field(nullable=True)
    payout_attempts: int = Field(default=0)
    provider_transfer_id: str | None = Field(default=None, max_length=100, unique=True)
    failure_code: str | None = Field(default=None, max_length=100)
    settled_at: datetime | None = ts_field(nullable=True)


class PayoutAccount(SQLModel, table=True):
    """The leader's connected account at the payment provider, created on first payout."""

    __tablename__ = "payout_accounts"
    __table_args__ = ({"schema": SCHEMA},)

    leader_id: int = Field(primary_key=True)
    provider_account_id: str = Field(max_length=100)
    created_at: datetime = ts_field(default_now=True)
