"""The user-facing data model: specs, statuses, ids, settings. Pure: no I/O at import, safe in workflows."""
