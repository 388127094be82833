"""Statistics shared by every pipeline (one bootstrap implementation)."""
