"""The base of every error a user can trigger. The CLI prints these as one line
(``lineside: error: <message>``) and exits 2, never as a traceback."""


class LinesideError(Exception):
    """An error caused by input the user controls; the message names it and the fix."""
