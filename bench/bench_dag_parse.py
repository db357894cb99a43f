"""DAG parse time, measured the way Airflow 3.3's DAG processor parses a file.

The processor's manager pre-imports the ``airflow.*`` modules a file imports
(``[dag_processor] parsing_pre_import_modules``) and forks one child per file; the child
imports the file. So the cost paid *per file* is what the child does: import our own
packages (``backup_airflow``, ``backupkit``, never pre-imported) and run the DAG
definition. The baseline, in the same process, is an "empty" DAG file with exactly the
same import lines and a one-task DAG: the difference is what our DAG definitions cost.

Each round forks a fresh child per file (so nothing of ours is cached between files),
alternating each DAG with its baseline; the median of ``--rounds`` rounds is printed as a
ratio. Goal (issue 14): every file within 3x of its empty baseline.

    .venv/bin/python bench/bench_dag_parse.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(1, str(DAGS))


def import_lines(path: Path) -> str:
    """The file's top-level import statements, as source."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    out = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append("\n".join(lines[node.lineno - 1: node.end_lineno]))
    return "\n".join(out)


def empty_dag(path: Path, tmp: Path) -> Path:
    body = import_lines(path) + '''
from airflow.sdk import DAG as _DAG, task as _task
with _DAG(dag_id="empty_%s", schedule=None):
    @_task
    def nothing():
        return None
    nothing()
''' % path.stem
    out = tmp / f"empty_{path.name}"
    out.write_text(body)
    return out


def pre_import(path: Path) -> None:
    """What the manager does before forking the child for ``path``."""
    from airflow.dag_processing.processor import _pre_import_airflow_modules

    class _Log:
        def warning(self, *a, **k):
            pass

    _pre_import_airflow_modules(str(path), _Log())


def parse_in_child(path: Path) -> float:
    """Fork, import ``path`` in the child as the processor does, return the child's seconds."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        import runpy

        t0 = time.perf_counter()

        runpy.run_path(str(path), run_name=f"unusual_prefix_{path.stem}")
        os.write(w, f"{time.perf_counter() - t0:.6f}".encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise RuntimeError(f"parsing {path} failed in the child (status {status})")
    return float(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-parse-airflow-"))
    files = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        empties = {f: empty_dag(f, Path(tmp)) for f in files}
        for f in files:
            pre_import(f)
        times: dict[Path, list[tuple[float, float]]] = {f: [] for f in files}
        for _ in range(args.rounds):
            for f in files:
                dag_s = parse_in_child(f)
                empty_s = parse_in_child(empties[f])
                times[f].append((dag_s, empty_s))
    print(f"{'DAG file':38} {'dag ms':>8} {'empty ms':>9} {'ratio':>6}")
    worst = 0.0
    for f in files:
        dag_ms = statistics.median(t[0] for t in times[f]) * 1000
        empty_ms = statistics.median(t[1] for t in times[f]) * 1000
        ratio = dag_ms / empty_ms
        worst = max(worst, ratio)
        print(f"{f.name:38} {dag_ms:8.1f} {empty_ms:9.1f} {ratio:6.2f}")
    print(f"worst ratio {worst:.2f} (goal <= 3.0: {'met' if worst <= 3.0 else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
