"""Data formats, manifests and synthetic data around the detection path."""
