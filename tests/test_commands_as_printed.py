"""The commands the README prints work as printed: `make manage ARGS="..."`, and what `make run` runs.

`make manage` runs a management command with the project's Python (.venv) in development mode
(DJANGO_DEBUG=1), whatever python and settings the shell has. `make run PORT=...` hands the port to
the demo's printed addresses and to scripts/run.sh.
"""

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import get_commands, load_command_class

ROOT = Path(settings.BASE_DIR)
README = (ROOT / "README.md").read_text()
MAKE_MANAGE = re.compile(r'make manage ARGS="([^"]*)"')


def make(*args, env=None, timeout=120):
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def shell_without_settings():
    """The environment of a newcomer's shell: no DJANGO_ or EVENTS_ variable, no DATABASE_URL."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "EVENTS_")) and name not in ("DATABASE_URL", "MAKEFLAGS", "MFLAGS")
    }


def test_the_readme_runs_every_management_command_through_make_manage_or_the_venv():
    bare = [line.strip() for line in README.splitlines() if re.search(r"(?<![/\w])python3? manage\.py", line)]

    assert bare == [], "the machine's python is not the project's: use make manage ARGS=... or .venv/bin/python"
    assert len(MAKE_MANAGE.findall(README)) >= 5


@pytest.mark.parametrize("example", sorted(set(MAKE_MANAGE.findall(README)) - {"..."}))  # "...": the pattern
def test_every_make_manage_example_of_the_readme_names_a_command_and_options_it_takes(example):
    name, *arguments = shlex.split(example)
    commands = get_commands()

    assert name in commands, f"{name} is not a management command"
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    parser.parse_args(arguments)  # exits (a SystemExit) on an unknown option or a missing argument


def test_make_manage_runs_a_command_with_the_venv_in_development_mode_from_a_bare_shell(tmp_path):
    if make("-q", "install").returncode != 0:
        pytest.skip(".venv is not up to date with the requirements: make manage would install them first")
    env = shell_without_settings()
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    schema = tmp_path / "form-file.schema.json"

    result = make("manage", f"ARGS=export_form --schema -o {schema}", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Exported the form file schema to {schema}."
    assert json.loads(schema.read_text())["title"] == "Form file"


def test_make_manage_says_in_one_line_what_a_command_refuses(tmp_path):
    if make("-q", "install").returncode != 0:
        pytest.skip(".venv is not up to date with the requirements: make manage would install them first")
    env = shell_without_settings()
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"

    result = make("manage", "ARGS=export_form", env=env)

    assert result.returncode != 0
    assert "CommandError: Give the slug of the form to export (or --schema)." in result.stderr
    assert "Traceback" not in result.stderr


def test_make_run_hands_its_port_to_the_demo_and_to_the_script():
    planned = make("-n", "run", "PORT=8101").stdout

    demo = next(line for line in planned.splitlines() if "manage.py demo" in line)
    assert "EVENTS_PUBLIC_URL=${EVENTS_PUBLIC_URL:-http://127.0.0.1:8101}" in demo
    assert "--no-next-steps" in demo  # run.sh prints the addresses once the server is up
    assert "PORT=8101" in next(line for line in planned.splitlines() if "scripts/run.sh" in line)
    alone = next(line for line in make("-n", "demo").stdout.splitlines() if "manage.py demo" in line)
    assert "--no-next-steps" not in alone and "http://127.0.0.1:8000" in alone
