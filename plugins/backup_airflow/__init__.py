"""Thin Airflow adapters (hooks, operators, notifiers, DAG defaults) over the pure ``backupkit`` core.

Everything that decides whether a backup is good lives in ``backupkit`` and is tested without
Airflow; this package only moves configuration, connections and results between the two.
"""
