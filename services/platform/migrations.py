"""Every service's Alembic history: where each lives, and applying them all (the CLI's
`migrate`, `make run` and the test fixtures). Each service's migrations/env.py runs its
own through the kernel (`services.common.migrations.run_migrations_online`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from services.common.settings import SERVICES, get_settings

ROOT = Path(__file__).resolve().parents[1]


def alembic_config(service: str, url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("script_location", str(ROOT / service / "migrations"))
    cfg.set_main_option("version_locations", str(ROOT / service / "migrations" / "versions"))
    cfg.attributes["database_url"] = url or get_settings().database_url_for(service)
    cfg.attributes["service"] = service
    return cfg


def upgrade_all(url: str | None = None, revision: str = "head") -> None:
    for service in SERVICES:
        command.upgrade(alembic_config(service, url), revision)


def downgrade_all(url: str | None = None, revision: str = "base") -> None:
    for service in reversed(SERVICES):
        command.downgrade(alembic_config(service, url), revision)
