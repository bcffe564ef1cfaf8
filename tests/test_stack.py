"""The pieces of `dspo up/down` that need no Prefect server: the port probe, process supervision
and the state folder. The whole stack runs in tests/test_e2e_prefect.py."""
from __future__ import annotations

import socket
import sys

import pytest

from flows import prefect_api, supervisor
from flows.stack_state import Paths, load_state, locked, save_state


def connection_left_in_time_wait() -> int:
    """A port of 127.0.0.1 whose server has stopped, leaving its side of a connection in TIME_WAIT
    (the side that closes first keeps it, as a stopped server does). Returns the port."""
    listener = socket.socket()
    # As uvicorn's: the kernel lets a socket with SO_REUSEADDR bind over TIME_WAIT connections
    # only when these came from a listener that had it too.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((prefect_api.HOST, 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection((prefect_api.HOST, port))
    accepted, _ = listener.accept()
    listener.close()
    accepted.close()                 # the server hangs up first ...
    assert client.recv(1) == b""     # ... the client sees the FIN ...
    client.close()                   # ... and closes too: the server's side is now in TIME_WAIT
    return port


def test_port_of_a_just_stopped_server_is_free():
    port = connection_left_in_time_wait()
    with socket.socket() as plain:   # the situation is real: a bind without SO_REUSEADDR is refused
        with pytest.raises(OSError):
            plain.bind((prefect_api.HOST, port))
    assert prefect_api.port_free(port)
    with socket.socket() as server:  # and the server can bind it, as uvicorn does
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((prefect_api.HOST, port))
        server.listen()


def test_port_another_program_listens_on_is_taken():
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind((prefect_api.HOST, 0))
        other.listen()
        assert not prefect_api.port_free(other.getsockname()[1])
    assert prefect_api.port_free(prefect_api.free_port())


def test_stop_ends_the_spawned_process_group_and_its_pid_file(tmp_path):
    paths = Paths(tmp_path / "stack")
    paths.root.mkdir()
    # A parent with a child in its process group: stop must end both, not just the recorded pid.
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
             "print('up', flush=True); time.sleep(60)"
    record = supervisor.spawn("sleeper", [sys.executable, "-c", script], {}, paths, tmp_path)
    assert supervisor.read_pidfile(paths.pidfile("sleeper")) == record and supervisor.is_ours(record)
    assert supervisor.wait_for(lambda: len(supervisor.group_members(record["pgid"])) == 2, 20)
    said = []
    assert supervisor.stop("sleeper", paths, 10, said.append)
    assert not supervisor.group_members(record["pgid"]) and not supervisor.is_ours(record)
    assert not paths.pidfile("sleeper").exists() and said == [f"stopped sleeper (pid {record['pid']})"]
    assert "up" in supervisor.tail(paths.log("sleeper"))
    assert not supervisor.stop("sleeper", paths, 10, said.append)


def test_a_recycled_pid_is_not_ours(tmp_path):
    paths = Paths(tmp_path)
    record = supervisor.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], {}, paths, tmp_path)
    try:
        assert not supervisor.is_ours({**record, "create_time": record["create_time"] - 10})
    finally:
        supervisor.stop("sleeper", paths, 10, lambda line: None)


def test_state_survives_a_round_trip_under_the_lock(tmp_path):
    paths = Paths(tmp_path / "new")
    assert load_state(paths) == {}
    with locked(paths):
        save_state(paths, {"port": 4321})
    assert load_state(paths) == {"port": 4321}


def test_a_postgresql_url_reaches_the_server_alone_and_is_shown_without_its_password(tmp_path, monkeypatch):
    from flows import database, environment

    chosen = database.chosen("postgresql://prefect:s3cr3t-pw@db.example.org:5433/prefect", tmp_path / "x.db")
    assert chosen.connection_url == "postgresql+asyncpg://prefect:s3cr3t-pw@db.example.org:5433/prefect"
    assert chosen.shown == "postgresql://***@db.example.org:5433/prefect" and "s3cr3t" not in repr(chosen)
    assert database.chosen(" ", tmp_path / "x.db").connection_url == f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    for url, message in [("mysql://u:s3cr3t-pw@h/db", "expected postgresql://"),
                         ("postgresql://u:s3cr3t-pw@h", "name the host and the database"),
                         ("postgresql://u:s3cr3t-pw@h:port/db", "not a URL")]:
        with pytest.raises(database.DatabaseError, match=message) as caught:
            database.postgresql(url)
        assert "s3cr3t" not in str(caught.value)

    monkeypatch.setenv("DSPO_DATABASE_URL", "postgresql://prefect:s3cr3t-pw@db.example.org/prefect")
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "sqlite+aiosqlite:///elsewhere.db")
    paths = Paths(tmp_path / "stack")
    digest = environment.passed_on_digest()
    worker_env = environment.stack_env(paths, 4300, tmp_path)
    assert "DSPO_DATABASE_URL" not in worker_env and "PREFECT_API_DATABASE_CONNECTION_URL" not in worker_env
    server_env = environment.server_env(paths, 4300, tmp_path, chosen)
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"] == chosen.connection_url
    assert {key: value for key, value in server_env.items() if key != "PREFECT_API_DATABASE_CONNECTION_URL"} == \
        {**worker_env, **environment.POSTGRES_TIMEOUTS}
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT", "7")  # the caller's choice stays
    assert environment.server_env(paths, 4300, tmp_path, chosen)["PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT"] == "7"
    sqlite_env = environment.server_env(paths, 4300, tmp_path, database.sqlite(paths.database))
    assert sqlite_env["PREFECT_API_DATABASE_CONNECTION_URL"] == f"sqlite+aiosqlite:///{paths.database}"
    monkeypatch.setenv("DSPO_DATABASE_URL", "postgresql://prefect:other@db.example.org/prefect")
    assert environment.passed_on_digest() == digest, "a new database password restarts no worker"
