"""Everything MLflow: the study's parent run, the mirror process that writes every trial's
run, the sync that makes the mirror whole, and the model logged by `hpo best --retrain`."""
