"""Errors that mean "the user's input is bad", as opposed to a bug.

``srrbench`` reports a ``UsageError`` in one line (its message names the bad input and what is allowed) with exit
code 2; any other exception is a bug and is reported as an internal error that points at ``--debug``. So code
that rejects a profile, a path, an option or a name raises one of these, never a bare ValueError/KeyError/
FileNotFoundError (which a bug raises too). The subclasses also derive from the built-in type they replace, so
callers that catch ``ValueError`` (and so on) keep working.

This module imports nothing: it is the lowest layer, importable from zoo, measures, analysis and benchmark.
"""


class UsageError(Exception):
    """The user's input is bad: a profile, a path, an option value or a name. The message says which and why."""


class BadValueError(UsageError, ValueError):
    """An option or argument has a value that is not allowed."""


class MissingInputError(UsageError, FileNotFoundError):
    """A file or directory the user pointed at does not exist or is not what the command needs."""


class UnknownNameError(UsageError, KeyError):
    """A name (measure, profile, dataset, ...) that is not known; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError's str() is the repr of its argument; the message reads better plain
        return str(self.args[0]) if self.args else ""


class SchedulerError(UsageError, ConnectionError):
    """A Dask scheduler address (``--scheduler``) that cannot be reached or where something else answers."""


class MissingExtraError(UsageError, ImportError):
    """An option needs an optional dependency that is not installed; the message names the extra to install."""


class UserModuleError(UsageError, ImportError):
    """A module of the user's (a measure module, a model's factory module) that is not found or raises while
    importing; the message names the module, where it was named and the original error."""
