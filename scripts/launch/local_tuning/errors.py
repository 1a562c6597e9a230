"""The local tuner's one error type."""


class TuningError(RuntimeError):
    """The study cannot start or go on; the message is one line."""
