"""Tests for recipe_chain.integrations.chroma_server against a real ``chroma run`` process.

One server is shared by the module (startup costs about a second and a half);
the restart test stops and restarts that same server, so it stays usable for
whichever test runs after it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recipe_chain.integrations.chroma_server import ChromaServer, ChromaServerError, connect

pytestmark = [pytest.mark.server, pytest.mark.timeout(180)]

TOKEN = "test-token-123"
posix_only = pytest.mark.skipif(os.name != "posix", reason="uses POSIX shell scripts and process groups")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    srv = ChromaServer(tmp_path_factory.mktemp("chroma-data"), auth_token=TOKEN, startup_timeout=60)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
    assert not srv.is_running


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; an unreaped zombie (e.g. an orphan awaiting init) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _fake_chroma(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-chroma"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_heartbeat_url_and_log(server: ChromaServer) -> None:
    assert server.is_running
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}"
    beat = server.heartbeat()
    assert any("heartbeat" in key for key in beat), beat
    assert _listening(server.port)
    assert server.log_path == server.path / "chroma-server.log"
    assert server.log_path.is_file()
    assert isinstance(server.log_tail(), str)
    assert "ChromaServer" in server.log_path.read_text(errors="replace")


def test_collection_add_and_query(server: ChromaServer) -> None:
    client = server.client()
    collection = client.get_or_create_collection("kb_query", embedding_function=None)
    collection.add(
        ids=["north", "east", "south"],
        embeddings=[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
        documents=["up", "right", "down"],
    )
    result = collection.query(query_embeddings=[[0.1, 0.9, 0.0]], n_results=2)
    assert result["ids"][0][0] == "north"
    assert result["documents"][0][0] == "up"
    assert collection.count() == 3


def test_client_sends_bearer_token(server: ChromaServer) -> None:
    client = server.client()
    assert client.get_settings().chroma_server_headers["Authorization"] == f"Bearer {TOKEN}"
    session_headers = client._server._session.headers  # type: ignore[attr-defined]
    assert session_headers["authorization"] == f"Bearer {TOKEN}"
    # An explicit Authorization header wins over auth_token; extra headers pass through.
    custom = server.client(headers={"Authorization": "Bearer other", "X-Trace": "1"})
    assert custom.get_settings().chroma_server_headers["Authorization"] == "Bearer other"
    assert custom.get_settings().chroma_server_headers["X-Trace"] == "1"
    via_url = connect(server.url, auth_token=TOKEN)
    assert via_url.get_settings().chroma_server_headers["Authorization"] == f"Bearer {TOKEN}"
    assert via_url.heartbeat() > 0


def test_auth_enforcement_matches_probe(server: ChromaServer) -> None:
    """Enforcement is what the running server does; the installed Rust server does none."""
    assert server.auth_enforced is not None
    if server.auth_enforced:
        with pytest.raises(Exception):
            connect(server.url).list_collections()
    else:
        # Not enforced: a client without any token is served. Only the header is ours to send.
        assert "Authorization" not in (connect(server.url).get_settings().chroma_server_headers or {})
        assert isinstance(connect(server.url).list_collections(), list)


def test_restart_persists_data_and_stop_is_idempotent(server: ChromaServer) -> None:
    collection = server.client().get_or_create_collection("kb_persist", embedding_function=None)
    collection.add(ids=["a", "b", "c"], embeddings=[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    port, pid = server.port, server.pid
    assert pid is not None

    server.stop()
    server.stop()  # idempotent
    assert not server.is_running
    assert server.pid is None
    assert not _alive(pid)
    assert not _listening(port)
    with pytest.raises(ChromaServerError, match="not running"):
        server.client()

    server.start()
    assert server.is_running and server.port == port
    reopened = server.client().get_collection("kb_persist", embedding_function=None)
    assert reopened.count() == 3
    nearest = reopened.query(query_embeddings=[[0.9, 0.1]], n_results=1)
    assert nearest["ids"] == [["a"]]
    server.start()  # no-op while running
    assert server.is_running


def test_missing_executable_names_pip_install(tmp_path: Path) -> None:
    srv = ChromaServer(tmp_path / "data", executable=str(tmp_path / "no-such-chroma"))
    with pytest.raises(ChromaServerError, match="pip install chromadb"):
        srv.start()
    assert not srv.is_running
    srv.stop()  # stop on a never-started server is a no-op


@posix_only
def test_early_exit_reports_log_tail(tmp_path: Path) -> None:
    exe = _fake_chroma(tmp_path, 'echo "boom: cannot open database $*" >&2\nexit 3')
    log = tmp_path / "logs" / "server.log"
    srv = ChromaServer(tmp_path / "data", executable=exe, log_path=log)
    with pytest.raises(ChromaServerError, match="exited early with code 3") as excinfo:
        srv.start()
    assert "boom: cannot open database run --path" in str(excinfo.value)
    assert log.is_file()
    assert not srv.is_running


@posix_only
def test_startup_timeout_kills_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # A "server" that never answers and has a child of its own in the same process group.
    exe = _fake_chroma(tmp_path, f"sleep 60 &\necho $! > {pid_file}\nwait")
    srv = ChromaServer(tmp_path / "data", executable=exe, startup_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ChromaServerError, match="not healthy within 1.0s"):
        srv.start()
    assert time.monotonic() - started < 15
    assert not srv.is_running
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_server_is_stopped_when_python_exits(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from recipe_chain.integrations.chroma_server import ChromaServer
        srv = ChromaServer({str(tmp_path / "data")!r}).start()
        print(srv.pid, srv.port, flush=True)
        """
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120, check=True
    )
    pid, port = (int(x) for x in out.stdout.split())
    assert not _alive(pid)
    assert not _listening(port)


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1:8000", "http://127.0.0.1:8000/api", "http://user:pw@127.0.0.1:8000", "http://:8000"],
)
def test_connect_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        connect(url)
