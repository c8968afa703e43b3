from services.common.migrations import run_migrations_online
from services.settlement import models  # noqa: F401  (registers this service's tables)

run_migrations_online("settlement")
