"""Real servers for tests, on 127.0.0.1 only, stopped afterwards: a moto S3 server, an MLflow
tracking server (artifacts proxied to S3), and a faulty proxy that injects S3 errors."""
from __future__ import annotations

import datetime
import functools
import http.server
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.conftest import free_port

BIN = Path(sys.executable).parent
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def _wait(url: str, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering at {url}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class MotoServer:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait(self.url, self.proc, "moto_server")

    @property
    def env(self) -> dict:
        return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.url}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    def stop(self):
        stop(self.proc)


class MlflowServer:
    """`mlflow server` on sqlite with artifacts proxied to s3://<bucket>/mlartifacts."""

    def __init__(self, workdir: Path, s3: MotoServer, bucket: str, auth: tuple[str, str] | None = None,
                 allowed_hosts: str | None = None):
        """auth: (admin user, password) runs MLflow's basic-auth app, configured as
        manifests/base/mlflow.yaml configures it."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **s3.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)
        extra = []
        if auth:
            config = workdir / "basic_auth.ini"
            config.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                              f"database_uri = sqlite:///{workdir / 'basic_auth.db'}\n"
                              f"admin_username = {auth[0]}\nadmin_password = {auth[1]}\n")
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "test-csrf-key-" + os.urandom(8).hex()
            extra += ["--app-name", "basic-auth"]
        if allowed_hosts:
            extra += ["--allowed-hosts", allowed_hosts]
        self.log = open(workdir / "mlflow-server.log", "wb")
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
             "--artifacts-destination", f"s3://{bucket}/mlartifacts", *extra],
            env=env, cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait(f"{self.url}/health", self.proc, "mlflow server", timeout=90)

    def stop(self):
        stop(self.proc)
        self.log.close()


class FaultyProxy:
    """An HTTP proxy in front of S3 that answers 503 SlowDown to chosen requests and can
    corrupt a downloaded body, so retries and integrity checks meet real failures."""

    def __init__(self, upstream: str, fail_first: int = 0, fail_every: int = 0, corrupt_gets: int = 0):
        self.upstream = upstream
        self.fail_first, self.fail_every, self.corrupt_gets = fail_first, fail_every, corrupt_gets
        self.count = self.failed = self.corrupted = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _relay(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.count += 1
                    n = proxy.count
                    fail = n <= proxy.fail_first or (proxy.fail_every and n % proxy.fail_every == 0)
                    if fail:
                        proxy.failed += 1
                if fail:
                    payload = b"<Error><Code>SlowDown</Code><Message>injected by the test</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                reply = requests.request(self.command, proxy.upstream + self.path, headers=headers, data=body,
                                         allow_redirects=False, timeout=60)
                content = reply.content
                if self.command == "GET" and reply.status_code == 200 and "list-type" not in self.path and content:
                    with proxy.lock:
                        corrupt = proxy.corrupted < proxy.corrupt_gets
                        if corrupt:
                            proxy.corrupted += 1
                    if corrupt:  # same length, one byte flipped: only a checksum can tell
                        content = bytes([content[0] ^ 0xFF]) + content[1:]
                self.send_response(reply.status_code)
                for key, value in reply.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                length = reply.headers.get("Content-Length", "0") if self.command == "HEAD" else len(content)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def self_signed_certificate(tmp_path):
    """A certificate for 127.0.0.1, so the client checks a real TLS chain."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def serve_folder(root, tls=None):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    scheme = "http"
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


def emulated_cluster(resources: dict[str, str], work, controller=None):
    """Run work(api_client) in a thread against a kmock Kubernetes API emulator on
    127.0.0.1 that serves the namespaced `resources` ({"group/version/plural": kind});
    `controller(api_client, stop)` may play an operator in a second thread."""
    import asyncio

    import kmock
    from kubernetes import client as k8s

    async def main():
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            for path, kind in resources.items():
                emulator.resources[path] = kmock.ResourceInfo(
                    namespaced=True, kind=kind, verbs={"get", "list", "create", "patch", "delete"})
            url = str(server.url).rstrip("/")
            assert url.startswith("http://127.0.0.1:")
            api_client = k8s.ApiClient(k8s.Configuration(host=url))
            stop = threading.Event()
            if controller:
                threading.Thread(target=controller, args=(api_client, stop), daemon=True).start()
            try:
                return await asyncio.to_thread(work, api_client)
            finally:
                stop.set()

    return asyncio.run(main())
