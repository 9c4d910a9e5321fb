"""An app that logs at INFO hears from tracker-agent what matters, not its libraries' chatter:
no APScheduler line per tick, no Alembic lines on a first open, one line per pause."""

from __future__ import annotations

import logging

from conftest import make_agent, wait_for


def test_an_app_at_info_gets_no_scheduler_or_migration_chatter(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with make_agent(fake, tmp_path / "outbox.db", drain_interval=0.05) as agent:
        agent.start()
        assert wait_for(agent.background_drain_idle, 2)
        agent.tracking.add_event({"registered": "a"}, "view")
        assert wait_for(lambda: len(fake.events) == 1, 5)
    chatty = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.INFO and r.name.startswith(("apscheduler", "alembic"))
    ]
    assert chatty == []
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("tracker_agent")]
    assert any(m.startswith("migrating outbox") for m in ours)
    assert len(ours) <= 3, ours


def test_a_pause_is_one_line(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    fake.revoke_credentials()
    with make_agent(fake, tmp_path / "outbox.db", pause_probe_interval=0.2) as agent:
        agent.tracking.add_event({"registered": "a"}, "view")
        agent.flush(timeout=1.0)  # the pause, then a few failed probes
    paused = [r for r in caplog.records if "paused" in r.getMessage()]
    assert len(paused) == 1 and paused[0].levelno == logging.ERROR
