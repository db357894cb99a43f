"""The Backup Health page in the Airflow UI: the plugin (plugin.py), its FastAPI app (app.py),
the UI links of each fact (links.py) and the restore-form pre-fill (prefill.py).

The facts and their verdicts are backupkit's (backupkit.health, backupkit.health_cache);
this package only serves them, through Airflow's own authentication and authorisation.
"""
