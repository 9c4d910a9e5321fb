"""`python -m tracker_agent.testing`: serve FakeExponea on a port (see serve.py)."""

from __future__ import annotations

from tracker_agent.testing.serve import main

if __name__ == "__main__":
    main()
