"""The web service: raw data and results as OME-Zarr and ROI endpoints over HTTP (aiohttp), Qt-free."""
