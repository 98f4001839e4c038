"""What pymongo's errors mean for a change stream: retry, stop, or the history is gone.

::

    PyMongoError
     +-- ConnectionFailure (AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError)  -> transient
     +-- OperationFailure
          +-- code 286 / 136, or "resume point may no longer be in the oplog",
          |   "resume token was not found" (code 280)                                   -> ResumeTokenLost
          +-- label ResumableChangeStreamError, or a code of the resumable list          -> transient
          +-- anything else (bad pipeline, not authorized, not a replica set)           -> ChangeStreamError

pymongo itself resumes a change stream once after a transient error; the input retries with backoff
after that. Transient errors are never raised; the other two stop the run with a message that says
what to do.
"""

from __future__ import annotations

__all__ = ["ChangeStreamError", "ResumeTokenLost", "is_history_lost", "is_pymongo_error", "is_transient"]

# Server errors meaning "the stream cannot start from that point": the oplog no longer holds it.
_HISTORY_LOST_CODES = frozenset({286, 136})  # ChangeStreamHistoryLost, CappedPositionLost
_HISTORY_LOST_TEXT = ("resume point may no longer be in the oplog", "resume token was not found")
# Server errors a new getMore may not see again (the change streams spec's resumable list), retried here
# with backoff after pymongo's own single resume attempt.
_RESUMABLE_CODES = frozenset(
    {6, 7, 43, 63, 89, 91, 133, 150, 189, 234, 262, 9001, 10107, 11600, 11602, 13388, 13435, 13436}
)


class ChangeStreamError(Exception):
    """The change stream failed in a way no retry fixes (bad pipeline, no permission, not a replica set)."""


class ResumeTokenLost(ChangeStreamError):
    """The server no longer has the point the stream must resume from (its oplog rolled over)."""


def is_pymongo_error(exc: BaseException) -> bool:
    """Raised by pymongo (the client library is imported here, not where the specs are loaded)."""
    from pymongo.errors import PyMongoError

    return isinstance(exc, PyMongoError)


def is_history_lost(exc: BaseException) -> bool:
    """The server cannot start the stream where asked: the oplog no longer holds that point."""
    from pymongo.errors import OperationFailure

    if not isinstance(exc, OperationFailure):
        return False
    if exc.code in _HISTORY_LOST_CODES:
        return True
    message = str(exc).lower()
    return any(text in message for text in _HISTORY_LOST_TEXT)


def is_transient(exc: BaseException) -> bool:
    """A lost connection, no primary for a while, or a server error a new cursor will not see again."""
    from pymongo.errors import ConnectionFailure, OperationFailure

    if isinstance(exc, ConnectionFailure):  # AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError
        return True
    if isinstance(exc, OperationFailure) and not is_history_lost(exc):
        return exc.has_error_label("ResumableChangeStreamError") or exc.code in _RESUMABLE_CODES
    return False
