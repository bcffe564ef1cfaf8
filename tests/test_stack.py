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
