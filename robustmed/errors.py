"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input from the user (unknown name, malformed file, bad ε string).

    Raised before anything is written, so the results store never holds a
    half-finished run because of a typo.
    """
