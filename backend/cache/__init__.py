"""The Redis block cache: keys, claims, notices, and the embedded redis-server."""
