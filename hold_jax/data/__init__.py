"""Training and reference data: generated point sets, a user's point cloud, images from TFDS or a folder, and the
.npz files that samples, features and statistics are stored in."""
