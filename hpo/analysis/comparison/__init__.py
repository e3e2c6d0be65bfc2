"""`hpo compare`: search strategies side by side over seeds, measured on held-out data.

`run` runs a whole comparison (the entry point); `studies` defines its arm-seed studies and the
rows of `results.csv`; `files` plans a comparison whose arms are study files; `winner` says
which trial of a study is retrained and tested; `narrowing_arm` is the book's own method as an
arm; `stats` turns the rows into the report's numbers and text, `figures` into its figures;
`mlflow_run` hands the report to MLflow.
"""
