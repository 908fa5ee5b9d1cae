"""Framework integrations: register the serving process, drain on SIGTERM, deregister last.

Each module imports its framework only when used and builds on the public
facades only: :mod:`.starlette` (FastAPI, Starlette; the asyncio twins),
:mod:`.flask`, :mod:`.django`. What they share is in :mod:`._serving`.
"""
