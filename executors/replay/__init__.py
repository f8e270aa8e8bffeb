"""``dagwright replay``: run a recorded run's plan again, from its recording, and check that
every step reproduces what was recorded.

Nothing calls out. Tools marked ``replay="serve"`` (the default: they may have side effects)
get their recorded outcome back without running; ``replay="rerun"`` tools (deterministic:
``echo``, ``llm.generate``, …) run again, and every model call they make is served from the
recording (``agents.replay``). Each attempt's resolved inputs, status and output are compared
with the recorded attempt; the first difference of each attempt is a *divergence*, recorded in
the replay's own trace (``replay_diverged``) with a diff of recorded vs replayed.

Retry waits are skipped; plan revisions (``on_failure: replan``) are served from the recording.

A cancelled recording replays to the point of cancellation: an attempt that was running when
the run was cancelled (recorded as cancelled, or never finished), or a step that was waiting to
start, is not executed; the replay waits there until every other step has got as far, then
cancels itself as the recording was (``cancelled_at`` in the report). An ``abandoned`` recording
(a local run whose process stopped: its lease expired) replays the same way, to where its
process stopped, as it is or will be closed (``lifecycle.close_abandoned``: in-flight attempts
cancelled); the replay is cancelled there (``recorded_status`` says the recording was
abandoned). The recording itself is not changed.

The parts:

- ``driver``: ``replay_run`` (read the recording, run it again on the local executor, report)
  and its ``ReplayReport``;
- ``replayer``: ``Replayer``, the recording indexed, what it serves, how it compares;
- ``divergence``: ``Divergence``, ``diff_text`` and the ``replay_diverged`` event.

Import the names from here (``dagwright.executors.replay``).
"""

from __future__ import annotations

from dagwright.executors.replay.divergence import Divergence, diff_text, divergence_event
from dagwright.executors.replay.driver import ReplayReport, replay_run
from dagwright.executors.replay.replayer import Replayer

__all__ = ["Divergence", "ReplayReport", "Replayer", "diff_text", "divergence_event", "replay_run"]
