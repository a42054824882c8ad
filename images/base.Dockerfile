# tosguard-base: the CPU steps (open run, download, tokenize, evaluate) and the common layer.
# Build from the repository root:
#   docker build -f images/base.Dockerfile --build-arg CODE_VERSION=TAG -t REGISTRY/tosguard-base:TAG .
# where TAG is `tosguard images --tag-only` (a digest of what is copied below)
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 1000 tosguard
WORKDIR /opt/tosguard

# The README's install (scripts/setup.sh: torch first, then the project under
# constraints.txt, then the offline base model), into the image's Python.
COPY constraints.txt pyproject.toml README.md ./
COPY scripts/setup.sh ./scripts/setup.sh
COPY components ./components
COPY pipelines ./pipelines
COPY tosguard ./tosguard
ARG CODE_VERSION=unknown
RUN TOSGUARD_VENV=none TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh main

USER 1000
ENV TOSGUARD_HOME=/tmp/tosguard TOSGUARD_CODE_VERSION=${CODE_VERSION}
