"""The one exception type for mistakes a user can make and fix."""


class CharnnError(Exception):
    """A problem with the user's input, options or files.

    The CLI prints it as one line (plus an optional hint) and exits non-zero;
    library callers can catch it like any other exception.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"
