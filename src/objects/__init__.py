"""The Cloudflare side of durable-rooms: the `Room` Durable Object and its platform adapters.

Only `objects.ffi` imports `js` and `pyodide`; every Pyodide conversion rule the adapters rely on is
applied there, with the rule of docs/cloudflare.md that states it.
"""
