"""The end-to-end study: one findings table per run (``study_findings``)."""
