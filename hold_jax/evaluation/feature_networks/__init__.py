"""The networks whose features the sample-quality metrics compare: the FID Inception-v3 (with its published
weights read from a local file) and a small classifier of scikit-learn's 8x8 digits."""
