"""The local runtime: durable-rooms on one machine, with no account and no network.

Hosts the same core (`rooms`) as the Cloudflare Worker behind an aiohttp server: per-room SQLite
files, D1 as SQLite with `migrations/` applied, R2 as a directory, and emulated hibernation.
Never uploaded to Cloudflare (it lives outside `src/`).
"""
