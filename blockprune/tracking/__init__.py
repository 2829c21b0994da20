"""MLflow runs, metrics, artifacts and figures of jobs and trials (see ``tracker``, ``artifacts``, ``figures``;
``compare`` puts plans side by side).

Nothing is imported here on purpose: importing mlflow is slow and starts background work, so
callers import the submodule they need when they need it.
"""
