"""tosguard step logic: plain functions, importable and testable without KFP."""
