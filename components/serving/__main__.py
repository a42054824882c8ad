"""``python -m tosguard.components.serving``: serve a model folder or store URI with KServe."""
from tosguard.components.serving.app import main

main()
