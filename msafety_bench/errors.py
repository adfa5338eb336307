"""One exception type for bad user input, so every entry point can print one line, not a traceback."""


class UsageError(Exception):
    """Bad user input: the message names the problem and how to fix it."""


class CacheWarning(UserWarning):
    """A damaged cache entry was set aside and is being rebuilt."""
