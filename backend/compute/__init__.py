"""Computation on arrays, no I/O: geometry, filters, features, forests, one block's pipeline, thresholding."""
