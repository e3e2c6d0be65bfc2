"""Everything MLflow, and the only layer that imports it: the study's parent run, the mirror
process that writes every trial's run, the sync that makes the mirror whole, finding runs
without creating any, the reports logged as artifacts, and the model logged by
`hpo best --retrain`."""
