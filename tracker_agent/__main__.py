"""`python -m tracker_agent`: the same command as the `tracker-agent` console script."""

from __future__ import annotations

from tracker_agent.cli import main

if __name__ == "__main__":
    main()
