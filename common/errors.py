"""The two exceptions a user sees: a mistake they can fix (exit 2), and a stop after a checkpoint.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""


class UserError(Exception):
    """A mistake the user can fix (a flag, a path, a checkpoint): printed as one line, exit 2."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was saved: exit 128 + signal."""

    def __init__(self, msg: str, code: int):
        super().__init__(msg)
        self.code = code
