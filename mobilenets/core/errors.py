"""The one exception type for bad input: its message is a single line that names the value and
what is allowed, and the CLI turns it into exit code 2."""


class MobileNetsError(ValueError):
    pass
