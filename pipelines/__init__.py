"""tosguard's KFP layer: components, the pipeline, compile, local run and the CLI."""
