"""Step 3, train: `step.run_step` (reuse a stored model or train one, store it, record it)
over the loop (loop.py), resumable checkpoints (checkpoint.py) and the multi-worker
launcher (launch.py)."""
