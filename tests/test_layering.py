"""The architecture's import rules, checked on the source (AST), not by convention.

* ``plugins/backupkit`` is the pure core: no module imports Airflow.
* boto3/botocore are imported only by the object store (``storage/objectstore.py`` and its
  ``storage/s3client.py``): every other module talks to S3 through a ``Bucket``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "plugins" / "backupkit"
S3_HOME = {CORE / "storage" / "objectstore.py", CORE / "storage" / "s3client.py"}


def imported_roots(path: Path) -> set[str]:
    """Top-level package names a module imports (absolute imports, anywhere in the file)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def core_modules() -> list[Path]:
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) > 50, "the core package moved: update this test"
    return modules


def test_the_core_never_imports_airflow():
    offenders = [str(p.relative_to(ROOT)) for p in core_modules() if "airflow" in imported_roots(p)]
    assert offenders == []


def test_only_the_object_store_imports_boto3():
    offenders = [str(p.relative_to(ROOT)) for p in core_modules()
                 if p not in S3_HOME and imported_roots(p) & {"boto3", "botocore"}]
    assert offenders == []
    assert imported_roots(CORE / "storage" / "s3client.py") >= {"boto3", "botocore"}


def test_the_rule_sees_an_import_hidden_in_a_function(tmp_path):
    hidden = tmp_path / "m.py"
    hidden.write_text("def f():\n    from airflow.sdk import dag\n    import botocore.config\n")
    assert {"airflow", "botocore"} <= imported_roots(hidden)
