"""The study's truth, in SQLite or PostgreSQL: opening storages, locks, retries, studies, and
the batched writes of a worker's running trial."""
