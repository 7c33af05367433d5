"""Run a real Chroma server (``chroma run``) as a managed subprocess.

:class:`ChromaServer` starts ``chroma run --path DIR --host HOST --port PORT``,
waits until its heartbeat endpoint answers, hands out
``chromadb.HttpClient`` instances bound to it, and guarantees the process is
gone when it is stopped, when the ``with`` block ends, or when the Python
interpreter exits. :func:`connect` builds an ``HttpClient`` from a
``http://host:port`` URL for a server that is already running elsewhere.

Token auth -- what is and is not enforced:
    ``chromadb >= 1.0`` ships ``chroma run`` as a Rust server (the
    ``chromadb_rust_bindings`` frontend). That server has **no token
    authentication**: its config has no auth section and it ignores the
    ``CHROMA_SERVER_AUTHN_*`` environment variables (checked against
    chromadb 1.5.9: a request without any token is served normally). With
    such a server, ``auth_token`` only makes :meth:`ChromaServer.client` and
    :func:`connect` send ``Authorization: Bearer <token>``; enforcing it needs
    a server or a reverse proxy in front of Chroma that checks the header.
    The older Python server of ``chromadb < 1.0`` did enforce tokens through
    ``CHROMA_SERVER_AUTHN_PROVIDER``/``CHROMA_SERVER_AUTHN_CREDENTIALS``; those
    variables are passed to the child when ``auth_token`` is set so such a
    server enforces it, but this path is not exercised by the tests here.
    After :meth:`ChromaServer.start`, :attr:`ChromaServer.auth_enforced`
    reports what the running server actually does, found by sending it one
    request without a token.

Example:
    >>> from recipe_chain.integrations.chroma_server import ChromaServer
    >>> with ChromaServer("./chroma-data") as server:  # doctest: +SKIP
    ...     client = server.client()
    ...     collection = client.get_or_create_collection("edits")
    ...     collection.add(ids=["a"], embeddings=[[0.0, 1.0]])
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

__all__ = ["ChromaServer", "ChromaServerError", "connect"]

logger = logging.getLogger(__name__)

_HEARTBEAT_PATHS = ("/api/v2/heartbeat", "/api/v1/heartbeat")
# An endpoint that needs auth when the server enforces it, per API version.
_PROBE_PATHS = {
    "/api/v2/heartbeat": "/api/v2/tenants/default_tenant/databases/default_database/collections",
    "/api/v1/heartbeat": "/api/v1/collections",
}
_INSTALL_HINT = "Install the Chroma server with:\n    pip install chromadb"
_LOG_TAIL_LINES = 40
_AUTO_PORT_ATTEMPTS = 3
# urllib honours http_proxy; a loopback health check must never go through a proxy.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ChromaServerError(RuntimeError):
    """The Chroma server could not be found, started, reached or stopped.

    When the server process was started, the message ends with the tail of
    its log file. It derives from ``RuntimeError`` only: this adapter does
    not import :mod:`recipe_chain`, whose package import loads torch.
    """


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _pick_free_port(host: str) -> int:
    bind_host = "127.0.0.1" if host == "localhost" else host.strip("[]")
    with socket.socket(_bind_family(bind_host), socket.SOCK_STREAM) as sock:
        sock.bind((bind_host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (TIME_WAIT leftovers do not count)."""
    bind_host = "127.0.0.1" if host == "localhost" else host.strip("[]")
    with socket.socket(_bind_family(bind_host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError:
            return False
    return True


def _client_host(host: str) -> str:
    """The address a client uses to reach a server bound to ``host``."""
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        host = "::1"
    return f"[{host}]" if ":" in host else host


def _with_auth(headers: dict[str, str] | None, auth_token: str | None) -> dict[str, str]:
    """A copy of ``headers`` plus a bearer token unless an Authorization header is already set."""
    merged = dict(headers or {})
    if auth_token and not any(key.lower() == "authorization" for key in merged):
        merged["Authorization"] = f"Bearer {auth_token}"
    return merged


def _http_client(host: str, port: int, *, ssl: bool = False, headers: dict[str, str], **kwargs: Any) -> ClientAPI:
    try:
        import chromadb
    except ImportError as exc:  # pragma: no cover - chromadb is a core dependency
        raise ChromaServerError(f"chromadb is not importable. {_INSTALL_HINT}") from exc
    # chromadb's HTTP client adds its own entries to the dict it is given: pass a copy.
    return chromadb.HttpClient(host=host, port=port, ssl=ssl, headers=dict(headers), **kwargs)


def connect(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    auth_token: str | None = None,
) -> ClientAPI:
    """Connect to a running Chroma server given its URL.

    Args:
        url: ``http://host:port`` or ``https://host:port``. A bare ``host:port``
            means ``http``. Without a port, ``http`` uses Chroma's default 8000
            and ``https`` uses 443.
        headers: Extra HTTP headers sent with every request.
        auth_token: Sent as ``Authorization: Bearer <token>`` unless
            ``headers`` already holds an ``Authorization`` header. Whether it
            is enforced depends on the server (see the module docstring).

    Returns:
        A ``chromadb`` client (``chromadb.api.ClientAPI``) talking to ``url``.

    Raises:
        ValueError: The URL is not ``http(s)://host[:port]``.

    Example:
        >>> from recipe_chain.integrations.chroma_server import connect
        >>> client = connect("http://127.0.0.1:8000", auth_token="s3cret")  # doctest: +SKIP
        >>> client.heartbeat()  # doctest: +SKIP
    """
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"Chroma server URL must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"Chroma server URL has no host: {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"Chroma server URL must be http(s)://host:port without a path or query, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("Chroma server URL must not carry credentials; use auth_token= or headers=")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"Chroma server URL has an invalid port: {url!r}") from exc
    ssl = parts.scheme == "https"
    if port is None:
        port = 443 if ssl else 8000
    return _http_client(_client_host(parts.hostname), port, ssl=ssl, headers=_with_auth(headers, auth_token))


class ChromaServer:
    """A local ``chroma run`` server process with a managed lifetime.

    The server binds to loopback (``127.0.0.1``) unless ``host`` says
    otherwise; a non-loopback ``host`` logs a warning because the installed
    server does not enforce authentication. The child runs in its own process
    group, :meth:`stop` signals the whole group (SIGTERM, then SIGKILL), and an
    :mod:`atexit` hook stops a server that is still running when Python exits
    normally. (A ``SIGKILL`` of the parent itself cannot be intercepted.)

    Token auth: with ``auth_token`` set, :meth:`client` sends
    ``Authorization: Bearer <token>`` and the child gets the
    ``CHROMA_SERVER_AUTHN_*`` variables that the Python server of
    ``chromadb < 1.0`` enforces. The Rust server of ``chromadb >= 1.0`` has no
    token auth and serves every request; enforcing the token then needs a
    server or reverse proxy that checks it. :attr:`auth_enforced` tells which
    case applies to the running server.

    Args:
        path: Directory for the Chroma data (created if missing).
        host: Interface to bind. Defaults to loopback only.
        port: TCP port; a free one is picked when ``None``.
        auth_token: Bearer token for clients (see above).
        startup_timeout: Seconds to wait for a healthy heartbeat.
        executable: The ``chroma`` command to run. By default the one next to
            ``sys.executable`` (the active virtualenv), else ``chroma`` on PATH.
        log_path: File that receives the server's stdout and stderr
            (appended). Defaults to ``<path>/chroma-server.log``.

    Example:
        >>> from recipe_chain.integrations.chroma_server import ChromaServer
        >>> server = ChromaServer("./chroma-data", auth_token="s3cret")  # doctest: +SKIP
        >>> server.start()  # doctest: +SKIP
        >>> server.url  # doctest: +SKIP
        'http://127.0.0.1:54321'
        >>> server.client().heartbeat()  # doctest: +SKIP
        >>> server.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        auth_token: str | None = None,
        startup_timeout: float = 60.0,
        executable: str | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        if port is not None and not 0 < int(port) < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be positive, got {startup_timeout}")
        self.path = Path(path).expanduser().resolve()
        self._host = host
        self._auto_port = port is None
        self._port = int(port) if port is not None else _pick_free_port(host)
        self.auth_token = auth_token
        self.startup_timeout = float(startup_timeout)
        self.executable = executable
        self.log_path = (
            Path(log_path).expanduser().resolve() if log_path is not None else self.path / "chroma-server.log"
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._heartbeat_path = _HEARTBEAT_PATHS[0]
        self._auth_enforced: bool | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ properties
    @property
    def host(self) -> str:
        """The interface the server binds to."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL clients use, e.g. ``http://127.0.0.1:8000``."""
        return f"http://{_client_host(self._host)}:{self._port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or ``None``."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def is_running(self) -> bool:
        """Whether the server process has been started and has not exited."""
        process = self._process
        return process is not None and process.poll() is None

    @property
    def auth_enforced(self) -> bool | None:
        """Whether the running server rejects a request without a token.

        ``None`` when no ``auth_token`` was given, the server was not started
        yet, or the probe was inconclusive.
        """
        return self._auth_enforced

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ChromaServer:
        """Start the server and wait until its heartbeat answers.

        Calling it on a running server does nothing.

        Returns:
            ``self``, so ``server = ChromaServer(path).start()`` works.

        Raises:
            ChromaServerError: The ``chroma`` executable is missing, the
                process exits early, or it is not healthy within
                ``startup_timeout``. The message includes the log tail.
        """
        with self._lock:
            if self.is_running:
                logger.debug("Chroma server at %s is already running", self.url)
                return self
            executable = self._resolve_executable()
            self.path.mkdir(parents=True, exist_ok=True)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            attempts = _AUTO_PORT_ATTEMPTS if self._auto_port else 1
            for attempt in range(1, attempts + 1):
                if self._auto_port and not _port_is_free(self._host, self._port):
                    self._port = _pick_free_port(self._host)
                try:
                    self._launch(executable)
                    return self
                except _PortTaken as exc:
                    if attempt == attempts:
                        raise ChromaServerError(str(exc)) from None
                    logger.info("Port %d was taken before the server bound it; retrying", self._port)
                    self._port = _pick_free_port(self._host)
            raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after ``timeout`` seconds.

        Safe to call any number of times, also when the server never started.
        """
        with self._lock:
            process = self._process
            if process is None:
                return
            self._process = None
            atexit.unregister(self._stop_at_exit)
            if process.poll() is None:
                logger.info("Stopping Chroma server (pid %d) at %s", process.pid, self.url)
                _signal_group(process, signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    logger.warning("Chroma server (pid %d) ignored SIGTERM for %.1fs; killing it", process.pid, timeout)
                    _signal_group(process, _SIGKILL)
                    try:
                        process.wait(timeout=10.0)
                    except subprocess.TimeoutExpired as exc:  # pragma: no cover - unkillable process
                        raise ChromaServerError(f"Chroma server (pid {process.pid}) did not die") from exc
            # Reap anything the server left behind in its process group.
            _signal_group(process, _SIGKILL)
            logger.debug("Chroma server exited with code %s", process.returncode)

    def __enter__(self) -> ChromaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"ChromaServer(path={str(self.path)!r}, url={self.url!r}, {state})"

    # ------------------------------------------------------------------ clients
    def client(self, **kwargs: Any) -> ClientAPI:
        """A ``chromadb.HttpClient`` connected to this server.

        Args:
            **kwargs: Passed to ``chromadb.HttpClient`` (``tenant``,
                ``database``, ``settings``, ...). ``headers=`` adds HTTP
                headers; with ``auth_token`` set, ``Authorization: Bearer
                <token>`` is added unless ``headers`` already has one.

        Returns:
            A client (``chromadb.api.ClientAPI``).

        Raises:
            ChromaServerError: The server is not running.

        Example:
            >>> collection = server.client().get_or_create_collection("kb")  # doctest: +SKIP
        """
        if not self.is_running:
            raise ChromaServerError("The Chroma server is not running; call start() first")
        headers = _with_auth(kwargs.pop("headers", None), self.auth_token)
        return _http_client(_client_host(self._host), self._port, headers=headers, **kwargs)

    def heartbeat(self, timeout: float = 5.0) -> dict[str, Any]:
        """Call the heartbeat endpoint and return its JSON body.

        Raises:
            ChromaServerError: The server does not answer with HTTP 200.
        """
        url = self.url + self._heartbeat_path
        try:
            with _NO_PROXY_OPENER.open(url, timeout=timeout) as response:
                return dict(json.loads(response.read().decode("utf-8") or "{}"))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ChromaServerError(f"Heartbeat {url} failed: {exc}") from exc

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines the server wrote since it was last started."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self._log_offset)
                data = handle.read()
        except OSError:
            return ""
        text = data.decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ internals
    def _resolve_executable(self) -> str:
        name = "chroma.exe" if os.name == "nt" else "chroma"
        if self.executable is not None:
            candidate = Path(self.executable).expanduser()
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
            found = shutil.which(self.executable)
            if found:
                return found
            raise ChromaServerError(
                f"Chroma executable {self.executable!r} was not found or is not executable. {_INSTALL_HINT}"
            )
        # Next to the running interpreter (the venv's bin/), without resolving symlinks out of it.
        beside = Path(sys.executable).parent / name
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        found = shutil.which("chroma")
        if found:
            return found
        raise ChromaServerError(
            f"The 'chroma' command was found neither next to {sys.executable} nor on PATH. {_INSTALL_HINT}"
        )

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")  # plain-text log instead of ANSI colour codes
        if self.auth_token:
            # Read by chromadb < 1.0's Python server; ignored by the Rust server of chromadb >= 1.0.
            env["CHROMA_SERVER_AUTHN_PROVIDER"] = "chromadb.auth.token_authn.TokenAuthenticationServerProvider"
            env["CHROMA_SERVER_AUTHN_CREDENTIALS"] = self.auth_token
            env["CHROMA_AUTH_TOKEN_TRANSPORT_HEADER"] = "Authorization"
        return env

    def _launch(self, executable: str) -> None:
        if not _is_loopback(self._host):
            logger.warning(
                "Chroma server binds to non-loopback host %r; the server does not enforce auth tokens", self._host
            )
        command = [executable, "run", "--path", str(self.path), "--host", self._host, "--port", str(self._port)]
        popen_kwargs: dict[str, Any] = {}
        if os.name == "nt":  # pragma: no cover - POSIX is what is tested
            popen_kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            popen_kwargs["start_new_session"] = True  # own process group: stop() reaches its children
        with open(self.log_path, "ab") as log:
            log.seek(0, os.SEEK_END)
            self._log_offset = log.tell()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} recipe-chain ChromaServer: {' '.join(command)}\n".encode())
            log.flush()
            logger.info("Starting Chroma server: %s (log: %s)", " ".join(command), self.log_path)
            started = time.monotonic()
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._child_env(),
                    **popen_kwargs,
                )
            except OSError as exc:
                raise ChromaServerError(f"Could not run {executable!r}: {exc}. {_INSTALL_HINT}") from exc
        self._process = process
        self._auth_enforced = None
        atexit.register(self._stop_at_exit)
        try:
            self._wait_healthy(process, started)
        except BaseException:
            self.stop(timeout=5.0)
            raise
        elapsed = time.monotonic() - started
        logger.info("Chroma server ready at %s after %.2fs (pid %d)", self.url, elapsed, process.pid)
        if self.auth_token:
            self._auth_enforced = self._probe_auth()
            if self._auth_enforced is False:
                logger.warning(
                    "This Chroma server does not enforce auth tokens: requests without the token are served. "
                    "Put a server or reverse proxy that checks 'Authorization: Bearer' in front of it to enforce it."
                )

    def _wait_healthy(self, process: subprocess.Popen[bytes], started: float) -> None:
        deadline = started + self.startup_timeout
        delay = 0.05
        while True:
            code = process.poll()
            if code is not None:
                tail = self.log_tail()
                message = f"Chroma server exited early with code {code}."
                if "address already in use" in tail.lower() or "addrinuse" in tail.lower():
                    if self._auto_port:
                        raise _PortTaken(f"{message} Port {self._port} is in use.\n{self._tail_block(tail)}")
                raise ChromaServerError(f"{message}\n{self._tail_block(tail)}")
            if self._heartbeat_ok():
                return
            if time.monotonic() >= deadline:
                raise ChromaServerError(
                    f"Chroma server at {self.url} was not healthy within {self.startup_timeout:.1f}s.\n"
                    f"{self._tail_block(self.log_tail())}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _heartbeat_ok(self) -> bool:
        for path in _HEARTBEAT_PATHS:
            try:
                with _NO_PROXY_OPENER.open(self.url + path, timeout=2.0) as response:
                    if response.status == 200:
                        self._heartbeat_path = path
                        return True
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):  # up, but guarded
                    self._heartbeat_path = path
                    return True
                continue  # e.g. 404/501 for an API version this server lacks: try the next one
            except (urllib.error.URLError, OSError):
                return False  # not accepting connections yet
        return False

    def _probe_auth(self) -> bool | None:
        url = self.url + _PROBE_PATHS[self._heartbeat_path]
        try:
            with _NO_PROXY_OPENER.open(url, timeout=5.0) as response:
                return not 200 <= response.status < 300
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return True
            logger.debug("Auth probe %s answered HTTP %d", url, exc.code)
            return None
        except (urllib.error.URLError, OSError) as exc:
            logger.debug("Auth probe %s failed: %s", url, exc)
            return None

    def _tail_block(self, tail: str) -> str:
        body = tail if tail.strip() else "(empty)"
        return f"Last lines of {self.log_path}:\n{body}"

    def _stop_at_exit(self) -> None:
        try:
            self.stop(timeout=5.0)
        except Exception:  # pragma: no cover - best effort during interpreter shutdown
            logger.exception("Could not stop the Chroma server at exit")


class _PortTaken(ChromaServerError):
    """Internal: an auto-picked port was grabbed by someone else before the server bound it."""


_SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the process group the server leads (to the process on Windows)."""
    if os.name == "nt":  # pragma: no cover
        if process.poll() is None:
            process.kill() if sig == _SIGKILL else process.terminate()
        return
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
