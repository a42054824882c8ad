"""The package's shape: one `tosguard` import name, a light ground floor, a clean wheel and
a small public API that loads a model from a folder, a store URI or the registry."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "kserve", "mlflow")

_PROBE = """
import atexit, sys
atexit.register(lambda: print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules)))
{body}
"""


def _heavy_after(body: str, tmp_path) -> str:
    """Which of torch, kserve, mlflow a fresh interpreter has imported after `body`."""
    done = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY, body=body)], capture_output=True,
                          text=True, timeout=120, env={"TOSGUARD_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
    line = [l for l in done.stdout.splitlines() if l.startswith("HEAVY=")]
    assert line, done.stdout + done.stderr
    return line[-1][len("HEAVY="):]


def test_ground_floor_imports_no_torch_kserve_or_mlflow(tmp_path):
    body = ("import tosguard; from tosguard.components import config, labels, storage, store, deploy; "
            "from tosguard.components.serving import split")
    assert _heavy_after(body, tmp_path) == ""


@pytest.mark.parametrize("argv", [["--help"], ["compile", "--output", "{out}"], ["serve", "--status"],
                                  ["serve", "--stop"], ["run", "--help"]])
def test_light_commands_do_not_load_torch(argv, tmp_path):
    argv = [a.format(out=tmp_path / "p.yaml") for a in argv]
    body = f"from tosguard.pipelines.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert "torch" not in _heavy_after(body, tmp_path).split(",")


def test_the_wheel_installs_only_tosguard_and_builds_without_warnings(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "warning" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr
    (wheel,) = tmp_path.glob("tosguard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"tosguard", wheel.name.split("-py")[0] + ".dist-info"}
    for needed in ("tosguard/__init__.py", "tosguard/components/serving/app.py", "tosguard/pipelines/cli.py",
                   "tosguard/components/train/loop.py", "tosguard/components/data/unfair_tos/train.jsonl",
                   "tosguard/components/data/unfair_tos/SOURCE.md"):
        assert needed in names, needed
    entry = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/entry_points.txt").decode()
    assert "tosguard = tosguard.pipelines.cli:main" in entry


def test_public_api_loads_from_folder_store_uri_and_registry(trained_model_dir, tosguard_home, s3_env):
    import tosguard
    from tosguard.components import storage
    from tosguard.components.tracking import open_pipeline_run, register_version

    clauses = ["We may terminate your account at any time without notice.", "Welcome to our service."]
    reference = tosguard.load_model(str(trained_model_dir)).score(clauses)
    assert [set(r) for r in reference] == [{"unfair", "categories", "scores", "truncated"}] * 2
    assert all(set(r["scores"]) == set(tosguard.CATEGORIES) for r in reference)

    storage.upload_folder(trained_model_dir, "s3://tosguard/api/models/tosguard/v1")
    run_id = open_pipeline_run("api", {"source": "test"})
    register_version("s3://tosguard/api/models/tosguard/v1", run_id, tags={}, promote=True)
    for uri in (trained_model_dir.as_uri(), "s3://tosguard/api/models/tosguard/v1", "models:/tosguard@champion",
                "models:/tosguard/1"):
        got = tosguard.load_model(uri).score(clauses)
        assert [r["categories"] for r in got] == [r["categories"] for r in reference], uri
        assert got[0]["scores"] == pytest.approx(reference[0]["scores"], abs=1e-5), uri

    document = "Terms of Service.\n\n1. We may terminate your account at any time. 2. You agree to arbitration."
    report = tosguard.load_model(str(trained_model_dir)).analyze(document)
    assert report["sentences"] == len(tosguard.split_sentences(document)) >= 3
    for flagged in report["flagged"]:
        assert document[flagged["start"]:flagged["end"]] == flagged["clause"]
    with pytest.raises(FileNotFoundError, match="not found in the registry"):
        tosguard.load_model("models:/tosguard@nobody")
    with pytest.raises(TypeError, match="list of clauses"):
        tosguard.load_model(str(trained_model_dir)).score("one string")
