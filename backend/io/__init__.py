"""Files: ilastik projects (read and write), image sources, output writers, training data, synthetic data."""
