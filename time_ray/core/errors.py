"""Errors meant for users: one paragraph that says what was wrong and what is allowed."""


class TimeRayError(Exception):
    """Base class of errors that the CLI prints as a message, without a stack trace."""


class ConfigError(TimeRayError):
    """A config field (named in the message) holds a value that is not allowed."""


class CheckpointError(TimeRayError):
    """A checkpoint is missing, unreadable, or does not match the architecture."""


def close_matches(word: object, candidates) -> list[str]:
    """Up to three candidates that look like ``word`` (difflib's ratio >= 0.6), closest first."""
    import difflib

    return difflib.get_close_matches(str(word), [str(c) for c in candidates], n=3)


def did_you_mean(word: object, candidates) -> str:
    """' Did you mean a, b?' naming the close candidates, or '' when none is close: the tail of an
    error message about an unknown name."""
    close = close_matches(word, candidates)
    return f" Did you mean {', '.join(close)}?" if close else ""


MAX_SHOWN = 300  # characters of a value an error message quotes


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` as an error message quotes it: cut to ``limit`` characters, with '... (N chars)' after
    a longer one, so that a hostile value (a string of megabytes) still gives a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} chars)"
