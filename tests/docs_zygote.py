"""A fork server for tests/test_docs.py: the documentation's ``vdsr`` and ``python FILE``
commands start from one interpreter that has already imported torch, numpy, onnx and vdsr,
which is most of a ``vdsr`` command's start (about 2 s of CPU on 2 cores, ten-odd times).

    python tests/docs_zygote.py SOCKET          # serves; prints "ready" once it listens
    python -S tests/docs_zygote.py --client SOCKET vdsr|python ARGS...   # what the shims run

Each command runs in a child forked for it, with the caller's arguments, folder, environment
and standard streams (passed over the socket), and its exit status goes back to the caller:
nothing differs from a fresh process but the imports already done. Nothing that starts threads
is imported before the fork (onnxruntime is not), and commands run one at a time.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import socket
import sys
import traceback

PRELOAD = ("numpy", "torch", "onnx", "PIL.Image", "safetensors.torch", "vdsr.cli", "vdsr.weights",
           "vdsr.nn.model", "vdsr.engine", "vdsr.api", "vdsr.io.images", "vdsr.batch", "vdsr.demo")


def serve(path: str) -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional part not installed: the child imports what it needs
            pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen()
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        pid = os.fork()
        if pid == 0:
            server.close()
            conn.close()
            _child(json.loads(message), fds)
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        conn.send(str(os.waitstatus_to_exitcode(status)).encode())
        conn.close()


def _child(request: dict[str, object], fds: list[int]) -> None:
    """Become the command: its streams, folder, environment and arguments; never returns."""
    code: object = 1
    try:
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(str(request["cwd"]))
        os.environ.clear()
        os.environ.update(request["env"])  # type: ignore[arg-type]
        argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
        if request["mode"] == "vdsr":
            from vdsr.cli import main

            sys.argv = ["vdsr", *argv]
            code = main(program=True)
        else:
            sys.argv = argv
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
            code = 0
    except SystemExit as e:
        code = e.code
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr, flush=True)
            code = 1
        os._exit(code)


def client(path: str, mode: str, argv: list[str]) -> int:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(path)
    request = {"mode": mode, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
    socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
    return int(conn.recv(16) or b"1")


if __name__ == "__main__":
    if sys.argv[1] == "--client":
        sys.exit(client(sys.argv[2], sys.argv[3], sys.argv[4:]))
    serve(sys.argv[1])
