"""Step 5, deploy: serve the model.

Embedded: a KServe ModelServer on 127.0.0.1 as a managed background process, with its
state (pid, URL, model, log) kept under the tosguard home so that ``tosguard serve
--stop`` and ``tosguard predict`` find it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from components.config import home
from components.predictor import MODEL_NAME

log = logging.getLogger(__name__)
DEFAULT_PORT = 8080


def server_dir() -> Path:
    return home() / "server"


def _state_path() -> Path:
    return server_dir() / "state.json"


def read_state() -> dict | None:
    path = _state_path()
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if _alive(state["pid"]) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _pick_port(preferred: int) -> int:
    if _port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_local_server(timeout: float = 20.0) -> bool:
    """Stop the managed server, if one runs. Returns whether one was stopped."""
    state = read_state()
    _state_path().unlink(missing_ok=True)
    if not state:
        return False
    pid = state["pid"]
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.time() + timeout
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    log.info("stopped the local server (pid %d)", pid)
    return True


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_local_server(model_dir: str, port: int | None = None, timeout: float = 180.0) -> dict:
    """(Re)start the managed ModelServer on 127.0.0.1 over model_dir; wait until ready."""
    model_dir = str(Path(model_dir).resolve())
    if not (Path(model_dir) / "tosguard.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not an exported tosguard model folder")
    stop_local_server()
    server_dir().mkdir(parents=True, exist_ok=True)
    port = _pick_port(port or int(os.environ.get("TOSGUARD_PORT", DEFAULT_PORT)))
    log_path = server_dir() / "server.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "components.predictor", "--model-dir", model_dir,
             "--host", "127.0.0.1", "--http-port", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the pipeline step that started it
        )
    url = f"http://127.0.0.1:{port}"
    state = {"pid": process.pid, "url": url, "model": MODEL_NAME, "model_dir": model_dir,
             "log": str(log_path), "started": time.time()}
    deadline = time.time() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"the local model server exited with code {process.returncode} while starting; "
                f"last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        try:
            ready = requests.get(f"{url}/v1/models/{MODEL_NAME}", timeout=2)
            if ready.status_code == 200 and ready.json().get("ready"):
                break
        except requests.RequestException:
            pass
        if time.time() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise TimeoutError(f"the local model server was not ready after {timeout:.0f} s; see {log_path}")
        time.sleep(0.5)
    _state_path().write_text(json.dumps(state, indent=2))
    log.info("serving %s at %s (pid %d, log %s)", model_dir, url, process.pid, log_path)
    return state
