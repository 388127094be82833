"""The study report: one self-contained HTML page of the study's tables and figures.

``html.py`` holds the pure building blocks (escaped tables, PNG data URIs, the page),
``study.py`` the report's sections built from the stages' reporting datasets.
"""
