"""The embedded sandbox: real PostgreSQL, a loopback S3 API and a realistic backup history."""
