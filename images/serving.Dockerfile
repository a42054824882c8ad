# tosguard-serving: the KServe predictor. KServe's storage initializer puts the model
# from storageUri at /mnt/models; the server binds all interfaces inside the pod.
#   docker build -f images/serving.Dockerfile -t ghcr.io/tosguard/tosguard-serving:0.1.0 .
ARG BASE=ghcr.io/tosguard/tosguard-base:0.1.0
FROM ${BASE}

EXPOSE 8080
ENTRYPOINT ["python", "-m", "tosguard.components.serving", "--model-dir", "/mnt/models", "--host", "0.0.0.0", "--http-port", "8080"]
