"""Starting and talking to a real ``monailabel start_server`` on loopback, shared by the app's test modules."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "apps" / "monailabel_eclip"
MONAILABEL = Path(sys.executable).parent / "monailabel"
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url: str, path: str, params: dict | None = None, **query) -> tuple[int, dict]:
    """POST to a MONAI Label endpoint with its ``params`` form field (GET for ``/info/``)."""
    full = f"{url}{path}?{urllib.parse.urlencode(query)}"
    form = urllib.parse.urlencode({"params": json.dumps(params or {})}).encode()
    data = None if path in ("/info/", "/datastore/") else form
    try:
        with urllib.request.urlopen(urllib.request.Request(full, data=data), timeout=180) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@contextlib.contextmanager
def serve(tmp: Path, studies: str, conf: Mapping[str, str], env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run the app from a copy in ``tmp`` (the server writes logs/ into its app folder) on a free port; yields
    its URL, then stops it with SIGINT (uvicorn's graceful shutdown) and checks it exited cleanly."""
    app = tmp / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("logs", "bin", "model", "__pycache__"))
    port = free_port()
    environment = dict(os.environ, PATH=f"{MONAILABEL.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                       PYTHONPATH=str(app / "compat"), **(env or {}))
    command = [str(MONAILABEL), "start_server", "--app", str(app), "--studies", studies, "--host", "127.0.0.1",
               "--port", str(port)]
    for key, value in conf.items():
        command += ["--conf", key, str(value)]
    log_path = tmp / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=tmp, env=environment, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if request(url, "/info/")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        try:
            yield url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                pytest.fail("server did not stop within 60 s of SIGINT")
    assert code == 0, log_path.read_text()[-3000:]
