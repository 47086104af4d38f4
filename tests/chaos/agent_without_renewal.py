"""`provision agent` with lease renewal switched off: chaos scenario 5 runs it to prove that
the history checker sees the double run that follows when leases lapse under long jobs.

The switch lives here, in the tests, so production settings carry no test switch at all.
Run as `python tests/chaos/agent_without_renewal.py agent` (the arguments of `provision`).
"""

from __future__ import annotations

from agent.worker import Agent
from core.cli.root import main


async def _renew_nothing(_agent: Agent) -> None:
    """Leases lapse: another agent reclaims long-running jobs and runs them a second time."""


Agent._renew_leases = _renew_nothing  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
