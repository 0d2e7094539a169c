"""A local PACS for trying and testing the DICOMweb path: Orthanc with its DICOMweb plugin, on this machine only.

Debian's packages provide both (``apt-get install orthanc orthanc-dicomweb``); this script writes the server's
configuration into a folder of its own, starts it in the background, waits until it answers, stores DICOM files
into it over STOW-RS and stops it again. docs/pacs.md walks through it; the tests use the same commands::

    python scripts/orthanc.py start --dir runs/pacs              # prints the DICOMweb URL
    python scripts/orthanc.py store --url http://127.0.0.1:8042/dicom-web data/phantom/mimic-cxr/files
    python scripts/orthanc.py stop --dir runs/pacs

Orthanc 1.10 listens on every interface but, with ``RemoteAccessAllowed`` false (set here), answers only
clients on this machine; authentication is off, so never start it with remote access on a shared network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.errors import InvalidDicomError

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
PID_FILE, CONFIG_FILE, LOG_FILE, URL_FILE = "orthanc.pid", "orthanc.json", "orthanc.log", "dicomweb.url"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_server() -> tuple[str, str]:
    """(Orthanc executable, DICOMweb plugin path), or SystemExit naming the Debian packages to install."""
    executable = shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.path.isfile(p)), None)
    plugin = next((os.path.join(d, DICOMWEB_PLUGIN) for d in PLUGIN_DIRS
                   if os.path.isfile(os.path.join(d, DICOMWEB_PLUGIN))), None)
    if executable is None or plugin is None:
        missing = "Orthanc" if executable is None else DICOMWEB_PLUGIN
        raise SystemExit(f"{missing} not found; install it with `apt-get install orthanc orthanc-dicomweb`")
    return executable, plugin


def start(folder: Path, http_port: int | None = None, timeout: float = 60.0) -> str:
    """Start Orthanc with its index and files under ``folder``; returns the DICOMweb base URL."""
    folder = folder.resolve()
    if (folder / PID_FILE).exists() and _alive(int((folder / PID_FILE).read_text())):
        return (folder / URL_FILE).read_text().strip()
    executable, plugin = find_server()
    port = http_port or free_port()
    (folder / "storage").mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "eclip-pacs", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
        "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": False, "SaveJobs": False, "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Host": f"127.0.0.1:{port}"},
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    with open(folder / LOG_FILE, "ab") as log:
        process = subprocess.Popen([executable, str(folder / CONFIG_FILE)], stdout=log, stderr=log,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    (folder / PID_FILE).write_text(str(process.pid))
    url = f"http://127.0.0.1:{port}/dicom-web"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"Orthanc exited with code {process.returncode}; see {folder / LOG_FILE}")
        try:
            if requests.get(f"{url}/studies", timeout=2).status_code == 200:
                (folder / URL_FILE).write_text(url)
                return url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    stop(folder)
    raise SystemExit(f"Orthanc did not answer on {url} within {timeout:.0f} s; see {folder / LOG_FILE}")


def stop(folder: Path, timeout: float = 20.0) -> bool:
    """Stop the Orthanc started in ``folder``; True when one was running."""
    pid_file = Path(folder) / PID_FILE
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    running = _alive(pid)
    if running:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink()
    return running


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def dicom_files(paths: list[str]) -> list[Path]:
    """Every DICOM file (by its preamble, whatever the name) in ``paths``, files and folders alike."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise SystemExit(f"{path}: not found")
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                with open(file, "rb") as stream:
                    if stream.read(132)[128:] == b"DICM":
                        found.append(file)
    return found


def store(url: str, paths: list[str], batch: int = 16) -> int:
    """STOW-RS every DICOM file under ``paths`` to ``url``; returns the number stored."""
    files = dicom_files(paths)
    if not files:
        raise SystemExit(f"no DICOM files found in {', '.join(paths)}")
    client = DICOMwebClient(url=url)
    for start_at in range(0, len(files), batch):
        datasets = []
        for file in files[start_at:start_at + batch]:
            try:
                datasets.append(pydicom.dcmread(file))
            except (InvalidDicomError, OSError, ValueError) as exc:
                raise SystemExit(f"{file}: not a readable DICOM file ({exc})") from exc
        client.store_instances(datasets)
    return len(files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="start Orthanc in the background; prints its DICOMweb URL")
    begin.add_argument("--dir", type=Path, required=True, help="folder for its configuration, index and files")
    begin.add_argument("--http-port", type=int, default=None, help="HTTP port (default: a free one)")
    end = commands.add_parser("stop", help="stop the Orthanc started with the same --dir")
    end.add_argument("--dir", type=Path, required=True)
    put = commands.add_parser("store", help="store DICOM files (or folders of them) over STOW-RS")
    put.add_argument("--url", required=True, help="DICOMweb base URL, e.g. http://127.0.0.1:8042/dicom-web")
    put.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "start":
        print(start(args.dir, args.http_port))
    elif args.command == "stop":
        print("stopped" if stop(args.dir) else "not running")
    else:
        print(f"stored {store(args.url, args.paths)} DICOM files in {args.url}")


if __name__ == "__main__":
    sys.exit(main())
