"""Real clients of the web service reading its zarr documents, compared with the headless export."""
