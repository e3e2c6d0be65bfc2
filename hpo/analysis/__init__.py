"""Reading finished studies: listings, reports and figures, the best trial and its retraining,
narrowing, and comparisons of search strategies (`comparison/`); `results` and
`comparison.run` are what the public API (`hpo.best`, `hpo.replay`, `hpo.report`,
`hpo.compare`) calls."""
