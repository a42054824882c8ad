"""Container images the compiled pipeline refers to (built from images/)."""
import os

REGISTRY = os.environ.get("TOSGUARD_IMAGE_REGISTRY", "ghcr.io/tosguard")
VERSION = os.environ.get("TOSGUARD_IMAGE_TAG", "0.1.0")
BASE_IMAGE = f"{REGISTRY}/tosguard-base:{VERSION}"
TRAINER_IMAGE = f"{REGISTRY}/tosguard-trainer:{VERSION}"
SERVING_IMAGE = f"{REGISTRY}/tosguard-serving:{VERSION}"
