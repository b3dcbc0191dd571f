"""durable-rooms' platform-free core: protocol, room engine, auth, front routing, limits.

Imports no `js`, `workers`, asyncio or sqlite3, so it runs unchanged in Pyodide on Cloudflare
and on host CPython (tests/test_layering.py keeps it that way).
"""
