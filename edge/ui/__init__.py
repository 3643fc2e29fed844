"""``lineside ui``: the operators' web page of one line, and the inspection API.

A separate process beside the line: it subscribes to the line's publish socket, reads the
decision log and the NG store read-only and polls the line's ``/readyz``, so a slow browser
never slows the line. ``command`` registers the subcommand; ``server`` is the Starlette app
(imported only when the command runs: ``import edge`` stays light); ``state`` keeps what
the page shows; ``inspect_api`` is ``POST /v1/inspect``. docs/ui.md describes it.
"""
