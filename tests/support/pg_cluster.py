"""A throw-away PostgreSQL cluster for one test session: its own folder, its own port, its own processes.

``initdb`` into a fresh temporary folder, ``pg_ctl`` to start, stop and restart it on a
free port of 127.0.0.1 (trust authentication, nothing listens elsewhere), and at the end
``pg_ctl stop`` and the folder removed, also when a test failed. The machine's own
PostgreSQL (127.0.0.1:5432, ``pg_ctlcluster``) is never touched: a fault test that
restarts "the database" restarts this one only.

When running as root the binaries run as the ``postgres`` user (``runuser``), which also
owns the folder: PostgreSQL refuses to run as root.
"""

import atexit
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

import psycopg

from .processes import free_port

COMMAND_SECONDS = 90  # the longest any single initdb / pg_ctl may take, on a busy machine
MACHINE_PORT = 5432


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries here (or initdb failed): the caller says so plainly."""


def binaries_dir():
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl (or FAULTS_PG_BIN)."""
    configured = os.environ.get("FAULTS_PG_BIN")
    candidates = (
        [configured]
        if configured
        else sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: [int(n) for n in re.findall(r"\d+", path)])
    )
    for path in reversed(candidates):
        if os.path.exists(os.path.join(path, "initdb")) and os.path.exists(os.path.join(path, "pg_ctl")):
            return path
    raise PostgresUnavailable(
        "No PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin: install the "
        "postgresql package, or point FAULTS_PG_BIN at the folder holding them."
    )


class ThrowawayPostgres:
    """One private cluster. ``start()``, then ``url(name)`` / ``create_database()``; ``destroy()`` at the end."""

    def __init__(self):
        self.bin = binaries_dir()
        self.as_postgres = os.geteuid() == 0
        self.port = free_port()
        if self.port == MACHINE_PORT:  # never, but never the machine's own port either
            self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="events-faults-pg-")
        self.data = os.path.join(self.root, "data")
        self.log_path = os.path.join(self.root, "postgres.log")
        if self.as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.user = "postgres"
        self.running = False
        atexit.register(self.destroy)  # even if the session ends without its fixture's finaliser

    # --- running the binaries ---------------------------------------------------------------

    def _run(self, tool, *args, timeout=COMMAND_SECONDS, check=True):
        command = [os.path.join(self.bin, tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            check=False,
        )
        if check and result.returncode != 0:
            raise PostgresUnavailable(
                f"{tool} {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}\n"
                f"{self.log_tail()}"
            )
        return result

    def log_tail(self, chars=3000):
        try:
            with open(self.log_path, errors="replace") as log:
                return "--- postgres.log ---\n" + log.read()[-chars:]
        except OSError:
            return ""

    # --- life cycle ---------------------------------------------------------------------------

    def start(self):
        """initdb (the first time), then start on 127.0.0.1:<port> and wait until it accepts connections."""
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            self._run(
                "initdb", "-D", self.data, "-A", "trust", "-U", self.user, "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"
            )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c max_connections=300 -c shared_buffers=64MB"
        )
        self._run(
            "pg_ctl",
            "-D",
            self.data,
            "-l",
            self.log_path,
            "-w",
            "-t",
            str(COMMAND_SECONDS - 10),
            "-o",
            options,
            "start",
        )
        self.running = True
        self.wait_until_up()
        return self

    def stop(self, mode="fast"):
        """``pg_ctl stop -m <mode>`` (fast: clients are disconnected, as in a restart of the service)."""
        self._run("pg_ctl", "-D", self.data, "-w", "-t", str(COMMAND_SECONDS - 10), "-m", mode, "stop")
        self.running = False

    def restart(self, down_seconds=0.0):
        """Stop (fast), stay down ``down_seconds``, start again. Returns (went_down, back_up) as time.time()."""
        went_down = time.time()
        self.stop("fast")
        time.sleep(down_seconds)
        self.start()
        return went_down, time.time()

    def destroy(self):
        """Stop it if it runs (fast, then immediate) and remove its folder. Never raises."""
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            for mode in ("fast", "immediate"):
                try:
                    self._run("pg_ctl", "-D", self.data, "-w", "-t", "30", "-m", mode, "stop", timeout=40, check=False)
                except (OSError, subprocess.SubprocessError):
                    pass
                if not os.path.exists(os.path.join(self.data, "postmaster.pid")):
                    break
        self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    # --- connections --------------------------------------------------------------------------

    def url(self, dbname="postgres"):
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname="postgres", **kwargs):
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname=dbname, connect_timeout=5, **kwargs
        )

    def is_up(self):
        try:
            with self.connect() as connection:
                connection.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def wait_until_up(self, timeout=COMMAND_SECONDS):
        deadline = time.monotonic() + timeout
        while not self.is_up():
            if time.monotonic() > deadline:
                raise PostgresUnavailable(
                    f"the throw-away PostgreSQL did not answer within {timeout} s\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def create_database(self, name, template=None):
        """A new database (a copy of ``template`` when given: nobody may be connected to that one)."""
        with self.connect(autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def drop_database(self, name):
        try:
            with self.connect(autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error as exc:  # the folder goes at the end of the session anyway
            print(f"(could not drop {name}: {exc})")
