"""Container images the compiled pipeline refers to (built from images/).

The tag follows the code: `VERSION-DIGEST`, where DIGEST is the start of a sha256 over every
file the Dockerfiles copy that decides what runs (the Python packages, the vendored data,
constraints.txt, pyproject.toml, scripts/setup.sh and the Dockerfiles themselves; not README
or caches). A fixed tag is wrong twice on a cluster: a node that already pulled it keeps
running the old code (pull policy IfNotPresent), and KFP's cache key holds a task's image
and command but not what is inside the image, so a changed library under the same tag would
be served the old code's cached outputs. TOSGUARD_IMAGE_TAG overrides the tag.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from tosguard import __version__

# What the Dockerfiles copy, relative to the repository root, and what of it is not code.
IMAGE_INPUTS = ("constraints.txt", "pyproject.toml", "scripts/setup.sh", "images", "components", "pipelines",
                "tosguard")
_NOT_CODE = re.compile(r"(^|/)(__pycache__|\.pytest_cache)(/|$)|\.py[co]$|(^|/)\.DS_Store$")
# The image names the repository's manifests and Dockerfiles ship with.
SHIPPED_REGISTRY = "ghcr.io/tosguard"
SHIPPED_TAG = "0.1.0"
IMAGE_NAMES = ("tosguard-base", "tosguard-trainer", "tosguard-serving")


def source_root() -> Path | None:
    """The repository this code runs from, or None when it is installed without one (in an image)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "images" / "base.Dockerfile").is_file() else None


def code_digest(root: Path) -> str:
    """sha256 over the image inputs under `root`: each file's relative path and bytes, in path order."""
    digest = hashlib.sha256()
    files = []
    for name in IMAGE_INPUTS:
        path = root / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in path.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        relative = path.relative_to(root).as_posix()
        if _NOT_CODE.search(relative):
            continue
        digest.update(relative.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def code_tag(root: Path | None = None) -> str:
    """The image tag for the code at `root` (default: this checkout): VERSION-DIGEST12.
    Without a checkout (inside an image): the tag the image was built with, else VERSION."""
    root = root or source_root()
    if root is None:
        built = os.environ.get("TOSGUARD_CODE_VERSION", "").strip()  # the images' CODE_VERSION build argument
        return built if built and built != "unknown" else __version__
    return f"{__version__}-{code_digest(root)[:12]}"


REGISTRY = os.environ.get("TOSGUARD_IMAGE_REGISTRY", "").strip() or SHIPPED_REGISTRY
VERSION = os.environ.get("TOSGUARD_IMAGE_TAG", "").strip() or code_tag()
BASE_IMAGE = f"{REGISTRY}/tosguard-base:{VERSION}"
TRAINER_IMAGE = f"{REGISTRY}/tosguard-trainer:{VERSION}"
SERVING_IMAGE = f"{REGISTRY}/tosguard-serving:{VERSION}"

_SHIPPED_REF = re.compile(re.escape(SHIPPED_REGISTRY) + r"/(" + "|".join(IMAGE_NAMES) + r"):" + re.escape(SHIPPED_TAG)
                          + r"(?![A-Za-z0-9._-])")


def retag(text: str, registry: str, tag: str) -> tuple[str, int]:
    """`text` with every shipped image reference (ghcr.io/tosguard/tosguard-*:0.1.0) naming
    `registry` and `tag` instead, and how many were replaced."""
    return _SHIPPED_REF.subn(lambda m: f"{registry}/{m.group(1)}:{tag}", text)


def render_manifests(source: Path, out: Path, registry: str, tag: str) -> list[Path]:
    """Copy the manifests folder `source` to `out` (which must not exist, or be empty) with
    every shipped image reference retagged; the files that changed."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder: choose a new one")
    if not (source / "base" / "kustomization.yaml").is_file():
        raise ValueError(f"{source} is not the manifests folder (no base/kustomization.yaml)")
    changed = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        text, count = retag(path.read_text(), registry, tag)
        if path.name == "kustomization.yaml" and path.parent.parent.name == "overlays":
            text, dropped = _without_image_renames(text, registry)
            count += dropped
        target.write_text(text)
        if count:
            changed.append(target)
    return changed


def _without_image_renames(text: str, registry: str) -> tuple[str, int]:
    """An overlay's kustomization without its renames of the shipped images: the rendered base
    already names `registry`, and a rename would move the workloads away from the allow-list
    (a ConfigMap, which kustomize's image transformer does not touch)."""
    import yaml

    data = yaml.safe_load(text)
    renames = data.get("images") or []
    kept = [i for i in renames if not str(i.get("name", "")).startswith(SHIPPED_REGISTRY + "/")]
    if len(kept) == len(renames):
        return text, 0
    if kept:
        data["images"] = kept
    else:
        data.pop("images")
    header = (f"# Rendered by `tosguard images --registry {registry}`: the base names your images, so this\n"
              "# overlay no longer renames them.\n")
    return header + yaml.safe_dump(data, sort_keys=False), len(renames) - len(kept)
