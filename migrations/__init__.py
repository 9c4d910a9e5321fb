"""The outbox's Alembic migrations, shipped as tracker_agent.migrations; one set for SQLite and
PostgreSQL (ddl.py: how a revision spells what differs).
"""
