"""The outbox's Alembic migrations, shipped as tracker_agent.migrations; one set for SQLite and
PostgreSQL (tracker_agent/outbox/ddl.py: how a revision spells what differs).
"""
