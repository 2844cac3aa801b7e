"""SQLite read models built from the log: schemas, idempotent appliers, the runner, rebuild."""
