"""File formats and safe file handling (one implementation of each codec)."""
