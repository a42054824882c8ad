# tosguard-trainer: the train step on an A100 pool (CUDA PyTorch + bitsandbytes for 4-bit QLoRA).
#   docker build -f images/trainer.Dockerfile --build-arg CODE_VERSION=TAG -t REGISTRY/tosguard-trainer:TAG .
# where TAG is `tosguard images --tag-only` (a digest of what is copied below)
FROM pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 1000 tosguard
WORKDIR /opt/tosguard

# The README's install (scripts/setup.sh), keeping the base image's CUDA torch 2.13.0,
# which satisfies the torch==2.13.0 pin in constraints.txt.
COPY constraints.txt pyproject.toml README.md ./
COPY scripts/setup.sh ./scripts/setup.sh
COPY components ./components
COPY pipelines ./pipelines
COPY tosguard ./tosguard
ARG CODE_VERSION=unknown
RUN TOSGUARD_VENV=none TOSGUARD_TORCH=keep bash scripts/setup.sh main

USER 1000
ENV TOSGUARD_HOME=/tmp/tosguard TOSGUARD_CODE_VERSION=${CODE_VERSION}
