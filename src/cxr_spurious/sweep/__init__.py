"""The shortcut sweep's library (issue 17): grid cells, confounded artefact assignment,
one model's metrics, across-seed summaries, shortcut detection by saliency, figures.

Plain functions over tables; the Kedro wiring lives in ``pipelines/``.
"""
