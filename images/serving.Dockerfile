# tosguard-serving: the KServe predictor. KServe's storage initializer puts the model
# from storageUri at /mnt/models; the server binds all interfaces inside the pod.
# Build with the base image of the same tag (`tosguard images` prints the command):
#   docker build -f images/serving.Dockerfile --build-arg BASE=REGISTRY/tosguard-base:TAG -t REGISTRY/tosguard-serving:TAG .
# BASE has no default, so a build that forgets it fails instead of layering another tag's code.
ARG BASE
FROM ${BASE}

EXPOSE 8080
ENTRYPOINT ["python", "-m", "tosguard.components.serving", "--model-dir", "/mnt/models", "--host", "0.0.0.0", "--http-port", "8080"]
