"""The benchmark suite (bench/run.py, ``make bench``) runs and reports every figure.

A tiny-count run (``--quick``: one round, one-second loads, small seeds), so that the suite cannot
rot. No timing is asserted: the figures depend on the machine; only that each one was measured and
printed. On PostgreSQL when the suite runs there (DATABASE_URL), in databases of its own.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),  # the bench itself gives its run 300 s
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make test installs it)"),
]


def test_bench_quick_run_measures_and_prints_every_figure(tmp_path):
    results = tmp_path / "bench.json"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(results)]
    database_url = os.environ.get("DATABASE_URL", "")
    if database_url.startswith(("postgres://", "postgresql://")):
        # The server of the suite's database (that database itself need not exist: pytest-django
        # creates test_<name>); the bench creates and drops its own databases there.
        server = urlsplit(database_url)._replace(path="/postgres").geturl()
        command += ["--database-url", server, "--prefix", f"bench_test_{os.getpid()}"]
    else:
        command += ["--sqlite"]

    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)

    report = f"stdout:\n{finished.stdout[-6000:]}\nstderr:\n{finished.stderr[-6000:]}"
    assert results.exists(), report
    figures = json.loads(results.read_text())["figures"]
    assert [row["figure"] for row in figures] == [
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "9",
        "10a",
        "10b",
        "10c",
        "10d",
    ]
    for row in figures:
        assert row["values"], f"figure {row['figure']} ({row['what']}) was not measured: {row['errors']}\n{report}"
        assert f"{row['figure']:<4} {row['what']}" in finished.stdout, report
    assert finished.returncode == 0, report
