"""Where bytes live: the object store (S3), local files and the state directory."""
