"""models.lock parsing, the local store, sources and verification."""

from edge.registry.lock import Catalog, FileEntry, ModelEntry, append_entry, parse_lock
from edge.registry.store import InstalledModel, Store, add_local_model

__all__ = ["Catalog", "FileEntry", "ModelEntry", "InstalledModel", "Store", "add_local_model", "append_entry",
           "parse_lock"]
