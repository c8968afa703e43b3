from services.catalog import models  # noqa: F401  (registers this service's tables)
from services.common.migrations import run_migrations_online

run_migrations_online("catalog")
