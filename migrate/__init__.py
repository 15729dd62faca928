"""migrate-old-weights: old multi-part ggml/ggmf model files -> one ggjt v1 file (or, with them and ggjt files, one GGUF file), with numpy alone."""

from __future__ import annotations

from .migrate import Migration, check_destination, migrate_file, open_migration, write_migration
from .sources import AlreadyMigrated
from .to_gguf import GGUFMigration, migrate_to_gguf, open_gguf_migration, write_gguf_migration

__all__ = ["AlreadyMigrated", "GGUFMigration", "Migration", "check_destination", "migrate_file", "migrate_to_gguf",
           "open_gguf_migration", "open_migration", "write_gguf_migration", "write_migration"]
