"""gunicorn settings for the WSGI integrations: the drain in ``--preload`` workers.

Without ``--preload`` nothing is needed: each worker loads the application
after gunicorn has set up its signal handlers, and the integration chains
to them. With ``--preload`` the application (and the integration) starts
in the master; each worker registers again after the fork, but gunicorn
then installs the worker's own handlers over the integration's, so SIGTERM
would stop the worker at once (the last one still deregisters as it exits,
only without the drain). ``post_worker_init`` installs the integration's
handling again, passing the signal on to gunicorn's after the drain::

    gunicorn --preload -c python:polaris_sdk.integrations.gunicorn -w 4 app:app

or, in a configuration file of your own::

    from polaris_sdk.integrations.gunicorn import post_worker_init

Importing this module imports nothing of gunicorn.
"""

from __future__ import annotations

from typing import Any

from polaris_sdk.integrations._serving import Serving

__all__ = ["post_worker_init"]


def post_worker_init(worker: Any) -> None:
    """gunicorn's hook, run in each worker once it is set up: handle SIGTERM again."""
    for serving in Serving.running():
        serving.take_signals()
