"""``backupctl`` sub-commands: one module each, exposing ``register(subparsers)``.

Exit codes and the usage error live here, not in ``backupkit.cli``, so that the command
modules never import the entry-point module (under ``python -m backupkit.cli`` that module
is ``__main__`` and a second import would make a second, different ``UsageError``).
"""

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments; printed and turned into exit code 2."""
