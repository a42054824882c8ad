"""Container images the compiled pipeline refers to (built from images/).

The tag follows the code: `VERSION-DIGEST`, where DIGEST is the start of a sha256 over every
file the Dockerfiles copy that decides what runs (the Python packages, the vendored data,
constraints.txt, pyproject.toml, scripts/setup.sh, .dockerignore and the Dockerfiles; not
README, caches or editor leftovers). A fixed tag is wrong twice on a cluster: a node that
already pulled it keeps running the old code (pull policy IfNotPresent), and KFP's cache key
holds a task's image and command but not what is inside the image, so a changed library
under the same tag would be served the old code's cached outputs. TOSGUARD_IMAGE_TAG
overrides the tag, TOSGUARD_IMAGE_REGISTRY the registry.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

from tosguard import __version__

# What the Dockerfiles copy, relative to the repository root.
IMAGE_INPUTS = ("constraints.txt", "pyproject.toml", "scripts/setup.sh", ".dockerignore", "images", "components",
                "pipelines", "tosguard")
# Caches and editor leftovers: neither hashed nor copied (.dockerignore holds the same list).
_NOT_CODE = re.compile(r"(^|/)(__pycache__|\.pytest_cache|\.mypy_cache|\.ruff_cache|[^/]*\.egg-info)(/|$)"
                       r"|\.py[co]$|~$|\.sw[op]$|\.orig$|\.rej$|(^|/)\.#[^/]*$|(^|/)\.DS_Store$")
# The image names the repository's manifests ship with (any tag).
SHIPPED_REGISTRY = "ghcr.io/tosguard"
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


# An image reference's registry part and tag, as Docker's reference grammar has them:
# host[:port] then lowercase path components ("ghcr.io/acme", "localhost:5000/acme/ml").
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def normalize_registry(text: str) -> str:
    """A registry path as images are pushed under it (spaces and a trailing '/' dropped), or a
    ValueError saying what one looks like."""
    registry = text.strip().rstrip("/")
    if not _REGISTRY.fullmatch(registry):
        raise ValueError(f"the image registry must be host[:port] and lowercase path parts, such as "
                         f"ghcr.io/your-org or localhost:5000/acme (got {text!r})")
    return registry


def _settings() -> tuple[str, str, str]:
    """(registry, tag, where the tag came from: env, checkout, image or version)."""
    registry = normalize_registry(os.environ.get("TOSGUARD_IMAGE_REGISTRY", "").strip() or SHIPPED_REGISTRY)
    pinned = os.environ.get("TOSGUARD_IMAGE_TAG", "").strip()
    if pinned:
        if not _TAG.fullmatch(pinned):
            raise ValueError(f"TOSGUARD_IMAGE_TAG must be an image tag (letters, digits, '_', '.', '-'; got {pinned!r})")
        return registry, pinned, "env"
    if source_root() is not None:
        return registry, code_tag(), "checkout"
    built = code_tag()
    return registry, built, "image" if built != __version__ else "version"


REGISTRY, VERSION, TAG_SOURCE = _settings()
BASE_IMAGE = f"{REGISTRY}/tosguard-base:{VERSION}"
TRAINER_IMAGE = f"{REGISTRY}/tosguard-trainer:{VERSION}"
SERVING_IMAGE = f"{REGISTRY}/tosguard-serving:{VERSION}"


def warn_if_untagged() -> None:
    """Tell someone compiling with neither a checkout nor TOSGUARD_IMAGE_TAG (on stderr) that
    the images are named by the bare version, a tag `tosguard images` never builds."""
    if TAG_SOURCE == "version":
        print(f"warning: no checkout of the repository here and TOSGUARD_IMAGE_TAG is unset, so the pipeline names "
              f"images tagged {VERSION}; build the images from a checkout (`tosguard images`) and set "
              "TOSGUARD_IMAGE_TAG to their tag", file=sys.stderr)


_SHIPPED_REF = re.compile(re.escape(SHIPPED_REGISTRY) + r"/(" + "|".join(IMAGE_NAMES) + r"):[A-Za-z0-9_][A-Za-z0-9_.-]*")
MARKER = ".tosguard-rendered"


def retag(text: str, registry: str, tag: str) -> tuple[str, int]:
    """`text` with every shipped image reference (ghcr.io/tosguard/tosguard-*:TAG) naming
    `registry` and `tag` instead, and how many were replaced."""
    return _SHIPPED_REF.subn(lambda m: f"{registry}/{m.group(1)}:{tag}", text)


def render_manifests(source: Path, out: Path, registry: str, tag: str) -> tuple[list[Path], list[str]]:
    """Copy the manifests folder `source` to `out` with every shipped image reference naming
    `registry` and `tag`; the files that changed, and the serving images the allow-list holds.

    `out` must be new, empty, or a folder this function rendered before (it leaves a marker
    file). Rendering over an earlier render keeps the serving images its allow-list held, so
    a run compiled earlier (a schedule) still deploys once the new list is applied; prune
    them by hand when those runs are gone."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise ValueError(f"{out} exists and is neither empty nor a folder `tosguard images` rendered: choose a new one")
    if not (source / "base" / "kustomization.yaml").is_file():
        raise ValueError(f"{source} is not the manifests folder (no base/kustomization.yaml)")
    earlier = _allowed_serving_images(out / "base" / "deploy-allowlist.yaml")
    serving = f"{registry}/tosguard-serving:{tag}"
    allowed = [serving] + [image for image in earlier if image != serving]
    changed = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        target = out / path.relative_to(source)
        text, count = retag(path.read_text(), registry, tag)
        if path.name == "kustomization.yaml" and path.parent.parent.name == "overlays":
            text, dropped = _without_image_renames(text, registry)
            count += dropped
        if path.name == "deploy-allowlist.yaml":
            text = _with_serving_images(text, allowed)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if count:
            changed.append(target)
    (out / MARKER).write_text(json.dumps({"registry": registry, "tag": tag}) + "\n")
    return changed, allowed


def _allowed_serving_images(path: Path) -> list[str]:
    import yaml

    if not path.is_file():
        return []
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    return [line.strip() for line in (data.get("serving_images") or "").splitlines() if line.strip()]


def _with_serving_images(text: str, images: list[str]) -> str:
    """The allow-list manifest with its `serving_images` block holding `images`, comments kept."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == "serving_images: |")
    indent = " " * (len(lines[start]) - len(lines[start].lstrip()) + 2)
    end = start + 1
    while end < len(lines) and (lines[end].startswith(indent) or not lines[end].strip()):
        end += 1
    return "".join(lines[:start + 1]) + "".join(f"{indent}{image}\n" for image in images) + "".join(lines[end:])


def _without_image_renames(text: str, registry: str) -> tuple[str, int]:
    """An overlay's kustomization without its `images:` renames of the shipped images, comments
    kept: the rendered base already names `registry`, and a rename would move the workloads off
    the allow-list (a ConfigMap, which kustomize's image transformer does not touch)."""
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == "images:")
    except StopIteration:
        return text, 0
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "-")) or not lines[end].strip()):
        end += 1
    block = "".join(lines[start + 1:end])
    names = re.findall(r"^\s*-\s*name:\s*(\S+)", block, re.M)
    if not names or any(not name.startswith(SHIPPED_REGISTRY + "/") for name in names):
        return text, 0  # a rename of something else: leave the overlay as it is
    note = f"# images: none renamed; `tosguard images --registry {registry}` wrote them into the base.\n"
    return "".join(lines[:start]) + note + "".join(lines[end:]), len(names)
