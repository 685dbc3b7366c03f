"""Requests served from cache and workers: the gateway, the objects layer and headless export."""
