"""Reports of the weekly maintenance review and the quarterly audit (pure Python, no Airflow).

:mod:`.weekly` collects trends, failure patterns, storage, cost and encryption;
:mod:`.audit` evaluates the audit controls; :mod:`.render` writes either as Markdown
with SVG charts and as one self-contained HTML page.
"""
