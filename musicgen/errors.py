"""Errors a user can cause and fix; entry points print their one-line message and exit non-zero."""


class UserError(Exception):
    """Bad input from the user (config, paths, files): the message names the thing and the fix."""
