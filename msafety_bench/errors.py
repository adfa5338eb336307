"""One exception type for bad user input, so every entry point can print one line, not a traceback."""


class UsageError(Exception):
    """Bad user input: the message names the problem and how to fix it.

    The message is one line whatever the input quoted in it holds: line breaks and other control
    characters from a user's file are shown escaped."""

    def __init__(self, message: str = ""):
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)))


class CacheWarning(UserWarning):
    """A damaged cache entry was set aside and is being rebuilt."""
