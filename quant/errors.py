"""The one exception type for bad input: the CLI prints it as a single line, without a traceback."""


class UserError(Exception):
    """A problem the user can fix. The message names the problem and the fix, on one line."""
