"""What a connector's failure means for the data, so the sink worker acts on the class, not on guesses.

::

    Exception
     +-- SinkError              base of the classes below; never raised itself
          +-- RetryableError    a later attempt may succeed: the worker backs off and retries
          |                     (connection refused or lost, timeout, broker/server restarting, throttled)
          +-- FatalError        no retry can fix it: straight to the dead-letter sink, or the unit fails
          |                     (record too large, permission denied, a row the table refuses)
          +-- BatchError        some records of a batch failed and the others are durable; ``failed``
                                lists their indexes in ``batch.envelopes`` and the worker retries only
                                those (Kinesis, Firehose and the Kafka producer report per record)

A connector maps its client library's errors onto these with ``raise RetryableError(...) from exc``.
Any other exception out of ``Sink.write`` is treated as retryable: a bug or an unmapped error then
costs retries and ends in the dead-letter sink or a failed unit, never in lost data.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BatchError", "FatalError", "RetryableError", "SinkError", "StartupError", "is_retryable"]


class StartupError(Exception):
    """A connector cannot start, for a reason its message explains (which one, why, what to do).

    ``streamer run`` logs the message alone and exits 1: a traceback would say nothing more.
    """


class SinkError(Exception):
    """Base of the errors a sink raises to tell the worker what to do."""


class RetryableError(SinkError):
    """The write may succeed if tried again later; the worker backs off and retries."""


class FatalError(SinkError):
    """No retry can make this write succeed; the worker gives up on it at once."""


class BatchError(SinkError):
    """Part of a batch failed; the records not listed in ``failed`` are durable.

    ``failed`` holds indexes into ``batch.envelopes``; ``retryable`` says whether retrying them may help.
    ``errors``, when given, is one message per failed record (same order), kept with dead letters.
    """

    def __init__(
        self,
        message: str,
        failed: Sequence[int],
        *,
        retryable: bool = True,
        errors: Sequence[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.failed = list(failed)
        self.retryable = retryable
        self.errors = list(errors) if errors is not None else None


def is_retryable(exc: BaseException) -> bool:
    """Whether the worker should try again after ``exc`` (anything unclassified is retried)."""
    if isinstance(exc, FatalError):
        return False
    if isinstance(exc, BatchError):
        return exc.retryable
    return True
