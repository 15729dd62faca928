"""migrate-old-weights: old multi-part ggml/ggmf model files -> one ggjt v1 file, with numpy alone."""

from __future__ import annotations

from .migrate import Migration, check_destination, migrate_file, open_migration, write_migration
from .sources import AlreadyMigrated

__all__ = ["AlreadyMigrated", "Migration", "check_destination", "migrate_file", "open_migration", "write_migration"]
