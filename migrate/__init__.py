"""migrate-old-weights: old multi-part ggml/ggmf model files -> one ggjt v1 file, with numpy alone.

With --format gguf, those and single-file ggjt v1/v2/v3 files -> one GGUF v3 file (migrate.to_gguf).
"""

from __future__ import annotations

from migrate.migrate import (
           Migration,
           check_destination,
           migrate_file,
           open_migration,
           write_migration,
)
from migrate.sources import AlreadyMigrated
from migrate.to_gguf import (
           GGUFMigration,
           migrate_to_gguf,
           open_gguf_migration,
           write_gguf_migration,
)

__all__ = ["AlreadyMigrated", "GGUFMigration", "Migration", "check_destination", "migrate_file", "migrate_to_gguf",
           "open_gguf_migration", "open_migration", "write_gguf_migration", "write_migration"]
