"""The Worker in real workerd, offline: `wrangler dev` started the way `make dev`, the workerd test
tier and the benchmarks all need it (docs/cloudflare.md, "Real workerd, offline")."""
