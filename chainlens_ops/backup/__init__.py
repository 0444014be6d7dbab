"""Backups: logical (pg_dump) and base (pg_basebackup) into the repository, with their
manifests (the catalog), verification and retention. See `manifest` for the layout."""
