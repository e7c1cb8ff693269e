"""The one exception type for problems the user can fix (bad recipe, bad data, missing files).

The CLI turns a `UsageError` into one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""


class UsageError(Exception):
    """A problem in the user's input, stated as one line that names the file/key and what to do."""
