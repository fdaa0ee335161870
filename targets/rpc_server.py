"""A TVM RPC server whose sessions run AArch64 code under qemu-aarch64 (development and tests).

``edgec rpc-server --tracker HOST:PORT --key KEY --target cortex-a55`` registers with a TVM
tracker like TVM's ``rpc_server`` on a board, speaking the same protocol (``tvm.rpc.base``: the
tracker's JSON messages, the magic/key handshake). Each accepted session is served by the board
side, ``runtime/rpc/edgec_rpc_server.c`` on TVM's aarch64 runtime (:mod:`.board_runtime`),
started under ``qemu-aarch64`` with the connection's socket handed over: uploads, module loads
and MetaSchedule's timings then run as aarch64 code, so ``edgec tune --rpc`` is tested end to end
on this machine. Timings are emulated time: they check correctness, not a board's speed.

One session at a time per server (TVM's servers do the same); start one server per emulated board.
A session that crashes (a bad candidate) ends that session only; the server offers itself again.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from edgec.errors import EdgecError
from edgec.targets.toolchains import require_tool

__all__ = ["qemu_board_command", "serve"]

logger = logging.getLogger("edgec.rpc_server")

# Seconds between checks that the tracker still holds this server's match key.
_PING_SECONDS = 2.0
# A key the tracker gave to a client that did not connect within this is replaced (as TVM's server).
_UNMATCHED_SECONDS = 6.0


def qemu_board_command(target: Any) -> list[str]:
    """The command that runs the board side of a session for ``target`` (a Cortex-A target)
    under qemu-aarch64 with the cross toolchain's C library; the socket and work folder follow."""
    from edgec.targets.board_runtime import server_program

    if target.runner != "qemu-aarch64":
        raise EdgecError(
            f"target '{target.name}' does not run AArch64 Linux code; the qemu-backed RPC server "
            "emulates Cortex-A boards (cortex-a53, cortex-a55, cortex-a72)"
        )
    qemu = require_tool("qemu-aarch64-static", "qemu-user-static")
    sysroot = "/usr/aarch64-linux-gnu"
    if not os.path.isdir(sysroot):
        raise EdgecError(f"'{sysroot}' is missing; install it with: apt-get install libstdc++6-arm64-cross")
    return [qemu, "-L", sysroot, "-cpu", target.qemu_cpu or "max", str(server_program(target.cross()))]


def _connect_tracker(tracker: tuple[str, int], key: str, port: int) -> socket.socket:
    from tvm.rpc import base

    try:
        conn = socket.create_connection(tracker, timeout=10)
        conn.settimeout(None)
        conn.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", base.recvall(conn, 4))[0] != base.RPC_TRACKER_MAGIC:
            raise EdgecError(f"{tracker[0]}:{tracker[1]} is not a TVM RPC tracker")
        base.sendjson(conn, [base.TrackerCode.UPDATE_INFO, {"key": "server:" + key, "addr": [None, port]}])
        if base.recvjson(conn) != base.TrackerCode.SUCCESS:
            raise EdgecError(f"the tracker at {tracker[0]}:{tracker[1]} refused to register key '{key}'")
    except (OSError, ValueError) as err:  # ValueError: a reply that is not the tracker's JSON
        raise EdgecError(
            f"cannot reach the TVM RPC tracker at {tracker[0]}:{tracker[1]} ({err.strerror or err}); start "
            "one with 'python -m tvm.exec.rpc_tracker --host HOST --port PORT'"
        ) from None
    return conn


def _offer(tracker_conn: socket.socket, key: str, port: int, taken: set[str]) -> str:
    """Puts this server on the tracker's list under a fresh match key; returns that key."""
    from tvm.rpc import base

    matchkey = base.random_key(key, cmap=taken)
    taken.add(matchkey)
    # No custom address: the tracker tells clients the address this connection comes from.
    base.sendjson(tracker_conn, [base.TrackerCode.PUT, key, [port, matchkey], None])
    if base.recvjson(tracker_conn) != base.TrackerCode.SUCCESS:
        raise OSError("the tracker refused the server")
    return matchkey


def _accept(listener: socket.socket, tracker_conn: socket.socket, key: str, port: int) -> tuple[Any, float]:
    """Waits for the client the tracker sends; returns its connection and its session timeout."""
    from tvm.rpc import base

    taken: set[str] = set()
    matchkey = _offer(tracker_conn, key, port, taken)
    unmatched = 0.0
    while True:
        if listener not in select.select([listener], [], [], _PING_SECONDS)[0]:
            base.sendjson(tracker_conn, [base.TrackerCode.GET_PENDING_MATCHKEYS])
            pending = base.recvjson(tracker_conn)
            # Absent from the pending keys: the tracker gave this server to a client that has not
            # connected (yet). One that never comes would keep it busy forever; offer a new key.
            unmatched = 0.0 if matchkey in pending else unmatched + _PING_SECONDS
            if unmatched > _UNMATCHED_SECONDS:
                matchkey, unmatched = _offer(tracker_conn, key, port, taken), 0.0
            continue
        conn, _ = listener.accept()
        try:
            if struct.unpack("<i", base.recvall(conn, 4))[0] != base.RPC_MAGIC:
                conn.close()
                continue
            length = struct.unpack("<i", base.recvall(conn, 4))[0]
            header, *options = base.recvall(conn, length).decode("utf-8").split()
        except OSError:
            conn.close()
            continue
        if header != "client:" + matchkey:
            conn.sendall(struct.pack("<i", base.RPC_CODE_MISMATCH))
            conn.close()
            continue
        server_key = ("server:" + key).encode("utf-8")
        conn.sendall(struct.pack("<ii", base.RPC_CODE_SUCCESS, len(server_key)) + server_key)
        timeout = next((float(o.split("=", 1)[1]) for o in options if o.startswith("-timeout=")), 0.0)
        return conn, timeout


def _serve_session(conn: socket.socket, timeout: float, command: Sequence[str], threads: int) -> None:
    """Runs the board side for one session with ``conn`` handed over; ends it at ``timeout``."""
    from tvm.rpc import _ffi_api

    env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
    address, client_port = conn.getpeername()[:2]
    peer = f"{address}:{client_port}"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgec-rpc-session-") as work:
        fd = conn.fileno()
        child = subprocess.Popen([*command, str(fd), work], pass_fds=(fd,), cwd=work, env=env)
        try:
            status = child.wait(timeout or None)
            logger.info("session from %s: %.1f s, exit status %d", peer, time.perf_counter() - start, status)
        except subprocess.TimeoutExpired:
            # What TVM's server does: tell the client why, then end the session.
            _ffi_api.ReturnException(fd, f"RPCSessionTimeoutError: the {timeout:g} s session expired")
            logger.warning("session timeout (%g s): ended", timeout)
        finally:
            child.kill()
            child.wait()
            conn.close()


def serve(
    tracker: tuple[str, int],
    key: str,
    command: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int = 1,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Registers with ``tracker`` under ``key`` and serves sessions with ``command`` until killed.

    Args:
        tracker: The tracker's address.
        key: The device key clients ask the tracker for (``edgec tune --rpc-key``).
        command: The board side (:func:`qemu_board_command`); the socket fd and a work folder follow.
        host, port: Where to listen (port 0: any free port).
        threads: ``TVM_NUM_THREADS`` of the board side (the artifact's threads).
        ready: Told the port once the server is registered.

    Raises:
        EdgecError: The tracker cannot be reached, or the address cannot be bound.
    """
    try:
        listener = socket.create_server((host, port))
    except OSError as err:
        raise EdgecError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    with listener:
        port = listener.getsockname()[1]
        tracker_conn = _connect_tracker(tracker, key, port)
        if ready is not None:
            ready(port)
        while True:
            try:
                conn, timeout = _accept(listener, tracker_conn, key, port)
            except OSError:
                # The tracker went away (restarted?): register again, or stop with the reason.
                tracker_conn.close()
                tracker_conn = _connect_tracker(tracker, key, port)
                continue
            _serve_session(conn, timeout, command, threads)
