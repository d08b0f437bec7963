"""Errors meant for users: one paragraph that says what was wrong and what is allowed."""


class TimeRayError(Exception):
    """Base class of errors that the CLI prints as a message, without a stack trace."""


class ConfigError(TimeRayError):
    """A config field (named in the message) holds a value that is not allowed."""


class CheckpointError(TimeRayError):
    """A checkpoint is missing, unreadable, or does not match the architecture."""
