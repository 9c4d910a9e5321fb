"""The durable outbox: schema, SQLite engine setup and migrations, the store, the drain's queries.

Kept import-light on purpose (no SQLAlchemy here): `tracker-agent status` must start fast.
"""
