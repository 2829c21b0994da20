"""The pipeline core: one job loop over a small Backend protocol, below ``distributed/`` and ``jobs/``.

- :mod:`~blockprune.pipeline.config`: the configuration schema (torch-free) shared by calibrate, sweep, study;
- :mod:`~blockprune.pipeline.sweep_spec`: a sweep spec (models × calibrations × trials) and its validation;
- :mod:`~blockprune.pipeline.prepare`: validation and tokenisation before any weight loads; the store identity;
- :mod:`~blockprune.pipeline.scoring`: score and select one trial from a store (facts from the method specs);
- :mod:`~blockprune.pipeline.evaluate`: what every model is measured on;
- :mod:`~blockprune.pipeline.records`: what a job and a trial log to MLflow;
- :mod:`~blockprune.pipeline.backend`: the :class:`Backend` protocol and the single-process ``LocalBackend``;
- :mod:`~blockprune.pipeline.job`: ``run_job(job, backend, tracker)``, the loop both backends run.

Only ``config`` and ``sweep_spec`` are light to import; the rest load torch through the model code.
"""
