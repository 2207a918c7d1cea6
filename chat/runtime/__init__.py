"""The turn runtime: the only place a turn starts, is listened to, or stops (both doors, the
admin, the commands and the tests use what this package exports).

start       : ``turn_start`` — one database hop, then the turn runs as a task of this process
              (``start``).
runner      : the running turn: chunks → coalescer → folder (``persistence``) → log
              (``streams``); the recorded end (``runner``).
supervision : the lease heartbeat, the idle watchdog, the title (``supervision``).
listen      : ``turn_listen`` / ``turn_subscribe`` / ``turn_watch`` (staff supervision, no owner
              check) — ``(sequence, chunk JSON, is_terminal)``
              from the turn's log, replay then live (``listen``, ``streams``).
approvals   : a turn waiting for the user's tool approval (``approvals``).
control     : the active turn of a session, ``turn_stop`` and ``turn_approval_answer`` (the
              answering request then listens on from the request) over Redis pub/sub
              (``control``).
registry    : what runs in this process, its tasks, the per-worker admission slots
              (``registry``).
shutdown    : SIGTERM interrupts the running turns cleanly (``shutdown``).
locks       : the session lease locks (``locks``).
"""

from chat.runtime.control import (
    turn_active_id,
    turn_approval_answer,
    turn_is_active,
    turn_stop,
    turn_stop_session,
)
from chat.runtime.listen import turn_listen, turn_subscribe, turn_watch
from chat.runtime.registry import (
    TOO_MANY_TURNS_RETRY_AFTER,
    RunningTurn,
    TurnHandle,
    TurnRefused,
    TurnRegistry,
    registry,
)
from chat.runtime.shutdown import SHUTDOWN_ERROR_TEXT, SHUTDOWN_REFUSED_TEXT, turns_interrupt_all
from chat.runtime.start import history_path_for_turn, turn_input_build, turn_start
from chat.runtime.streams import StreamLagged

turn_wait_idle = registry.wait_idle

__all__ = [
    "SHUTDOWN_ERROR_TEXT",
    "SHUTDOWN_REFUSED_TEXT",
    "TOO_MANY_TURNS_RETRY_AFTER",
    "RunningTurn",
    "StreamLagged",
    "TurnHandle",
    "TurnRefused",
    "TurnRegistry",
    "history_path_for_turn",
    "registry",
    "turn_active_id",
    "turn_approval_answer",
    "turn_input_build",
    "turn_is_active",
    "turn_listen",
    "turn_start",
    "turn_stop",
    "turn_stop_session",
    "turn_subscribe",
    "turn_wait_idle",
    "turn_watch",
    "turns_interrupt_all",
]
