"""PostgreSQL for the production stack: Debian's server, a data directory in the state directory.

One cluster holds two databases, ``mlflow`` (MLflow's backend store) and
``prefect`` (the Prefect server's, with ``pg_trgm``). The superuser's
password is generated once into ``<state>/secrets/pg-password`` (mode 0600);
clients read it through a libpq password file (``PGPASSFILE``), so no
connection URL, process argument or parameter ever carries it.

``postgres`` refuses to run as root: when the caller is root the server runs
as the unprivileged system user ``nnpipe-pg`` (created if missing), which owns
the data directory and nothing else.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from nnpipe.deploy.processes import spawn, stop
from nnpipe.deploy.secretfiles import secret_dir, write_secret

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
PG_USER = "nnpipe-pg"   # the OS user the server runs as when the caller is root
DB_USER = "nnpipe"      # the database superuser every client logs in as
DATABASES = ("mlflow", "prefect")
NAME = "postgres"


def pg_bin() -> Path:
    """The folder of ``initdb``/``postgres``, installing Debian's ``postgresql`` when none is found (as root)."""
    for cand in (os.environ.get("NNPIPE_PG_BIN", ""), *PG_BIN_CANDIDATES):
        if cand and (Path(cand) / "postgres").exists():
            return Path(cand)
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], env=env, capture_output=True, timeout=600)
        for cand in PG_BIN_CANDIDATES:
            if (Path(cand) / "postgres").exists():
                return Path(cand)
    raise RuntimeError("PostgreSQL is not installed (looked in " + ", ".join(PG_BIN_CANDIDATES)
                       + "); install Debian's `postgresql` package or set NNPIPE_PG_BIN")


def run_as() -> str | None:
    """The OS user the server runs as: ``nnpipe-pg`` (created if needed) for root, else the caller (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                       check=True, capture_output=True)
    return PG_USER


def password(state: Path) -> str:
    """The database password, generated on first use."""
    path = secret_dir(state) / "pg-password"
    if not path.exists():
        write_secret(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def passfile(state: Path) -> Path:
    """``<state>/secrets/pgpass``: what libpq, psycopg2 and asyncpg read instead of a password in the URL."""
    path = secret_dir(state) / "pgpass"
    write_secret(path, f"127.0.0.1:*:*:{DB_USER}:{password(state)}\n")
    return path


def url(port: int, database: str, driver: str = "postgresql") -> str:
    """A connection URL without the password (it comes from ``PGPASSFILE``)."""
    return f"{driver}://{DB_USER}@127.0.0.1:{port}/{database}"


def _check_reachable(data: Path, user: str | None) -> None:
    """The server's user must traverse every folder above its data directory (pytest's tmp folders are 0700)."""
    if user is None:
        return
    probe = subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(data)], capture_output=True)
    if probe.returncode != 0:
        raise RuntimeError(f"{data}: the PostgreSQL user {user!r} cannot reach this folder; choose a state directory "
                           "whose parent folders others may enter (mode 755 or 711)")


def init(state: Path) -> Path:
    """``initdb`` the data directory ``<state>/postgres`` once; returns it."""
    data = state / "postgres"
    if (data / "PG_VERSION").exists():
        return data
    user = run_as()
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    pw_file = state / ".pg-init-password"  # initdb reads the password from a file; removed straight after
    write_secret(pw_file, password(state) + "\n")
    if user is not None:
        ent = pwd.getpwnam(user)
        for path in (data, pw_file):
            os.chown(path, ent.pw_uid, ent.pw_gid)
        os.chmod(state, os.stat(state).st_mode | 0o711)
    try:
        _check_reachable(data, user)
        done = subprocess.run([str(pg_bin() / "initdb"), "-D", str(data), "-U", DB_USER, "--pwfile", str(pw_file),
                               "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
                               "--locale=C.UTF-8"], capture_output=True, text=True, user=user, timeout=300)
    finally:
        pw_file.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"initdb {data} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return data


def start(state: Path, port: int, timeout: float = 60) -> None:
    """Start the server on 127.0.0.1:``port`` (TCP only) and wait until it accepts logins."""
    data = init(state)
    user = run_as()
    args = [str(pg_bin() / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=", "-c", "max_connections=200"]
    proc = spawn(state, NAME, args, user=user)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (state / "logs" / f"{NAME}.log").read_text()[-1500:]
            raise RuntimeError(f"postgres exited with code {proc.returncode}: {tail.strip().splitlines()[-1:]}")
        try:
            _connect(state, port, "postgres").close()
            return
        except Exception as exc:  # psycopg2.OperationalError until it accepts connections
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"postgres on 127.0.0.1:{port} did not accept logins within {timeout:g} s: {last}")


def stop_server(state: Path) -> bool:
    """Fast shutdown (SIGINT: roll back open transactions, checkpoint); True if it was running."""
    import signal

    return stop(state, NAME, timeout=60, sig=signal.SIGINT)


def _connect(state: Path, port: int, database: str):
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, password=password(state), dbname=database,
                            connect_timeout=3)


def create_databases(state: Path, port: int) -> None:
    """``mlflow`` and ``prefect`` (with ``pg_trgm``, which Prefect's search indexes need), if missing."""
    conn = _connect(state, port, "postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in DATABASES:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()
    conn = _connect(state, port, "prefect")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    conn.close()
