"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class UserError(ValueError):
    """Bad input from the user: a spec, a file, an argument. The message names file, key and value."""
