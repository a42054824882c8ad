"""Untrusted inputs: https only unless allowed, archives that cannot escape or explode,
store keys that cannot write outside their folder, and no secret in logs, MLflow or the
compiled pipeline."""
from __future__ import annotations

import io
import tarfile

import pytest

from tosguard.components import storage
from tosguard.components.download import SPLITS, DataError, bundled_dir, download
from tests.servers import serve_folder


def _tarball(path, members):
    """members: (TarInfo, bytes or None)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _file(name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _splits():
    return [_file(f"{s}.jsonl", (bundled_dir() / f"{s}.jsonl").read_bytes()) for s in SPLITS]


def test_https_works_and_plain_http_is_refused_unless_allowed(https_root, tmp_path, monkeypatch):
    root, url = https_root
    _tarball(root / "ok.tar.gz", _splits())
    assert download(f"{url}/ok.tar.gz", str(tmp_path / "a"))["rows"]["test"] == 1607
    plain_root = tmp_path / "plain"
    plain_root.mkdir()
    _tarball(plain_root / "ok.tar.gz", _splits())
    server, plain = serve_folder(plain_root)
    try:
        with pytest.raises(DataError, match="plain http is refused"):
            download(f"{plain}/ok.tar.gz", str(tmp_path / "b"))
        monkeypatch.setenv("TOSGUARD_ALLOW_HTTP", "1")
        assert download(f"{plain}/ok.tar.gz", str(tmp_path / "c"))["rows"]["test"] == 1607
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("members, message", [
    (lambda: _splits() + [_file("../escape.txt", b"x")], "points outside the archive"),
    (lambda: _splits() + [_file("/etc/evil", b"x")], "points outside the archive"),
    (lambda: _splits() + [(tarfile.TarInfo("link"), None)], None),  # filled in below: a symlink
    (lambda: _splits() + [(tarfile.TarInfo("hard"), None)], None),  # a hard link
    (lambda: _splits() + [(tarfile.TarInfo("dev"), None)], None),  # a character device
    (lambda: _splits() + [_file(f"pad/{i}.txt", b"") for i in range(1001)], "more than 1000 members"),
], ids=["parent", "absolute", "symlink", "hardlink", "device", "members"])
def test_crafted_archives_are_refused_before_anything_is_written(members, message, https_root, tmp_path, request):
    root, url = https_root
    built = members()
    kind = request.node.callspec.id
    if kind in ("symlink", "hardlink", "device"):
        info = built[-1][0]
        info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}[kind]
        info.linkname = "train.jsonl" if kind != "device" else ""
        message = "is a link" if kind != "device" else "is a device"
    _tarball(root / "crafted.tar.gz", built)
    with pytest.raises(DataError, match=message):
        download(f"{url}/crafted.tar.gz", str(tmp_path / "out"))
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()


def test_archive_size_limits(https_root, tmp_path, monkeypatch):
    root, url = https_root
    _tarball(root / "big.tar.gz", _splits() + [_file("zeros.bin", b"\0" * 3_000_000)])
    monkeypatch.setattr("tosguard.components.download.MAX_UNPACKED_BYTES", 2_000_000)
    with pytest.raises(DataError, match="unpacks to more than 2000000 bytes"):
        download(f"{url}/big.tar.gz", str(tmp_path / "a"))
    monkeypatch.setattr("tosguard.components.download.MAX_ARCHIVE_BYTES", 10_000)
    with pytest.raises(DataError, match="the limit is 10000|over the limit of 10000"):
        download(f"{url}/big.tar.gz", str(tmp_path / "b"))


def test_store_keys_cannot_escape_the_target_folder(s3_env, tmp_path):
    client = storage.s3_client()
    client.put_object(Bucket="tosguard", Key="evil/model/config.json", Body=b"{}")
    client.put_object(Bucket="tosguard", Key="evil/model/../../../escaped.txt", Body=b"owned")
    target = tmp_path / "deep" / "target"
    with pytest.raises(storage.IntegrityError, match="outside"):
        storage.download_folder("s3://tosguard/evil/model", target)
    assert not list(tmp_path.rglob("escaped.txt")) and not target.exists()


def test_no_secret_reaches_logs_mlflow_or_the_compiled_pipeline(https_root, tosguard_home, tmp_path, monkeypatch,
                                                                caplog):
    from mlflow import MlflowClient

    from tosguard.components.tracking import open_run_step, tracking_uri
    from tosguard.pipelines.cli import main

    canaries = ["AKIACANARYKEY", "canary-secret-value", "canary-mlflow-password", "canarypass", "canarysig"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", canaries[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canaries[1])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", canaries[2])
    _, url = https_root
    source = url.replace("https://", "https://reader:canarypass@") + "/missing.tar.gz?X-Amz-Signature=canarysig&v=1"
    caplog.set_level("DEBUG")
    with pytest.raises(DataError) as err:
        download(source, str(tmp_path / "never"))
    run_id, _ = open_run_step("secrets", source, {"preset": "quick"})
    run = MlflowClient(tracking_uri()).get_run(run_id)
    assert run.data.params["source"].startswith("https://***@127.0.0.1:")
    assert "404" in str(err.value)
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "--output", str(out)]) == 0
    seen = "\n".join([str(err.value), caplog.text, out.read_text(), repr(run.data.params), repr(run.data.tags)])
    leaked = [c for c in canaries if c in seen]
    assert not leaked, leaked


def test_a_bad_serving_profile_fails_before_training_and_before_the_running_server_stops(monkeypatch):
    """serve_profile is checked by the pipeline's first task (not at the deploy step, after
    training), and the local deploy checks it before it stops the server that is running."""
    from tosguard.components import deploy
    from tosguard.components.config import PRESETS
    from tosguard.components.tracking import open_run_step

    with pytest.raises(ValueError, match="serve_profile must be one of default, triage or empty"):
        open_run_step("r", "bundled", PRESETS["quick"].to_dict(), serve_profile="Triage")
    stopped = []
    monkeypatch.setattr(deploy, "stop_local_server", lambda *a, **k: stopped.append(1))
    with pytest.raises(ValueError, match="profile must be one of default, triage"):
        deploy.start_local_server("/nonexistent", profile="Triage")
    assert stopped == []

    for port, env in ((70000, None), (-5, None), (None, "abc"), (None, "65536")):
        if env is None:
            monkeypatch.delenv("TOSGUARD_PORT", raising=False)
        else:
            monkeypatch.setenv("TOSGUARD_PORT", env)
        with pytest.raises(ValueError, match="TOSGUARD_PORT must be a port number" if env == "abc" else "port must be"):
            deploy.start_local_server("/nonexistent", port=port)
    assert stopped == []


def test_a_stale_or_corrupt_server_record_never_stops_another_program(tosguard_home, capsys):
    """state.json outlives the server (a reboot reuses PIDs): `serve --stop` must not signal
    a process that is not tosguard's server, and a corrupt record reads as no server."""
    import json
    import subprocess
    import sys

    from tosguard.components import deploy
    from tosguard.pipelines.cli import main

    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        deploy.server_dir().mkdir(parents=True, exist_ok=True)
        record = {"pid": stranger.pid, "url": "http://127.0.0.1:9", "model_dir": "/x", "log": "/x"}
        (deploy.server_dir() / "state.json").write_text(json.dumps(record))
        assert main(["serve", "--status"]) == 1
        assert main(["serve", "--stop"]) == 0
        assert "no local server was running" in capsys.readouterr().out
        assert stranger.poll() is None  # still running: not signalled
        # A server of another home on another port, under this record's (reused) PID: not ours.
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", deploy.SERVER_MODULE,
                                  "--http-port", "1234"], start_new_session=True)
        try:
            (deploy.server_dir() / "state.json").write_text(json.dumps({**record, "pid": other.pid,
                                                                        "url": "http://127.0.0.1:4321"}))
            assert deploy.read_state() is None
            (deploy.server_dir() / "state.json").write_text(json.dumps({**record, "pid": other.pid,
                                                                        "url": "http://127.0.0.1:1234"}))
            assert deploy.read_state()["pid"] == other.pid  # same module, same port: the record's server
        finally:
            other.kill()
            other.wait()
        (deploy.server_dir() / "state.json").write_text("{bad")
        assert deploy.read_state() is None
        assert main(["serve", "--stop"]) == 0 and stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_numeric_environment_settings_name_the_variable_when_bad(monkeypatch):
    import math

    from tosguard.components.config import env_number

    monkeypatch.delenv("TOSGUARD_X", raising=False)
    assert env_number("TOSGUARD_X", 7) == 7
    monkeypatch.setenv("TOSGUARD_X", "12")
    assert env_number("TOSGUARD_X", 7) == 12 and env_number("TOSGUARD_X", 1.5, float) == 12.0
    for raw, kind, message in (("abc", int, "must be an integer"), ("1.5", int, "must be an integer"),
                               ("-3", int, ">= 0"), ("nan", float, "finite"), ("inf", float, "finite")):
        monkeypatch.setenv("TOSGUARD_X", raw)
        with pytest.raises(ValueError, match=f"TOSGUARD_X {message}" if "must" in message else message):
            env_number("TOSGUARD_X", 1, kind)
    assert math.isfinite(env_number("TOSGUARD_Y_UNSET", 2.0, float))


def test_port_0_means_any_free_port_and_run_checks_server_settings_before_training(tosguard_home, monkeypatch,
                                                                                   capsys):
    from tosguard.components import deploy
    from tosguard.pipelines.cli import main

    assert deploy._pick_port(0) > 0
    for name, value, message in (("TOSGUARD_PORT", "abc", "TOSGUARD_PORT must be a port number"),
                                 ("TOSGUARD_PROFILE", "fast", "TOSGUARD_PROFILE: profile must be one of"),
                                 ("TOSGUARD_MAX_INSTANCES", "0", "TOSGUARD_MAX_INSTANCES must be a finite number >= 1")):
        monkeypatch.setenv(name, value)
        if name == "TOSGUARD_MAX_INSTANCES":  # read when the module is imported: import it afresh
            monkeypatch.delitem(__import__("sys").modules, "tosguard.components.serving.validate", raising=False)
        assert main(["run", "--preset", "quick", "--output", str(tosguard_home / "out")]) == 2
        assert message in capsys.readouterr().err
        monkeypatch.delenv(name)
    assert not (tosguard_home / "out").exists()  # refused before anything ran


def test_an_interrupted_start_leaves_no_server_behind(tosguard_home, tmp_path, monkeypatch):
    """Ctrl-C (or any error) while the server starts: the child is killed, not orphaned
    without a record that `serve --stop` could find. The server module is stood in for by a
    process that never gets ready."""
    import json
    import subprocess

    from tosguard.components import deploy

    model = tmp_path / "model"
    model.mkdir()
    (model / deploy.CARD_FILE).write_text(json.dumps({"categories": []}))
    started = []
    real_popen = subprocess.Popen

    def never_ready(cmd, **kw):
        process = real_popen(["sleep", "60"], **kw)
        started.append(process)
        return process

    monkeypatch.setattr(deploy.subprocess, "Popen", never_ready)
    monkeypatch.setattr(deploy.time, "sleep", lambda s: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        deploy.start_local_server(str(model), port=0)
    assert started and started[0].poll() is not None  # killed and reaped
    assert deploy.read_state() is None
