"""Errors that ``core`` raises for bad input. Their message names the file, field or line and what was
expected, so the UI can show it as is and the command line can print it and exit non-zero."""


class InputError(ValueError):
    """A file, folder or value supplied by the user is missing or malformed."""


class WorkspaceError(InputError):
    """The workspace folder or its database cannot be used."""


class NonFiniteError(InputError):
    """A number the workbench read or computed (a weight, a loss, a score) is NaN or infinite: the message names
    where (the step, the checkpoint, the tensor), so that no wrong figure is shown or saved as if it were one.
    An ``InputError``: what caused it is a file or a setting (a checkpoint's weights, a learning rate)."""
