"""Exceptions for mistakes a user can fix (bad paths, names, files)."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints it as one line and exits 2."""


class DataError(UserError, ValueError):
    """A dataset path is missing or its files are malformed."""


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, corrupt or does not match the model."""
