"""User-facing errors.

Anything raised as ``TLBenchError`` is a problem with the user's input (a path, a file, a setting) that the
user can fix; the command-line entry point prints it as one line and exits with status 2 instead of a
traceback. Programming errors stay ordinary exceptions so that they keep their traceback.
"""


class TLBenchError(Exception):
    """A problem the user can fix; the message names the file or setting and the fix."""


def one_line(message: str, limit: int = 400) -> str:
    """``message`` (a parser's multi-line complaint, say) as one line of at most ``limit`` characters."""
    flat = " ".join(message.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
