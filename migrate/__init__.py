"""migrate-old-weights: old llama.cpp files (multi-part ggml/ggmf, single-file ggjt) -> one ggjt v1 or GGUF v3 file,
with numpy alone. One pipeline (migrate.migrate) builds a ggmlfmt.job.Job; the command writes or describes it.
"""

from __future__ import annotations

from migrate.migrate import check_destination, migrate_file, plan_migration
from migrate.sources import AlreadyMigrated

__all__ = ["AlreadyMigrated", "check_destination", "migrate_file", "plan_migration"]
