"""Running a study: the objective, in-memory pruning, the worker loop, worker processes and
how they stop, and `run_study`, one whole run as `hpo run` makes it."""
