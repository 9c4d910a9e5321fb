"""The durable outbox: schema, engine setup and migrations (SQLite, or PostgreSQL behind the same
Backend seam), the store, the drain's queries.

Kept import-light on purpose (no SQLAlchemy here): `tracker-agent status` must start fast.
"""
