"""Ray layer: the Ray backend of the job loop (model actors on k GPUs, scoring fan-out) and sweeps.

Modules, from the bottom up:

- :mod:`~blockprune.distributed.cluster`: connect to (or start) a cluster, fail fast on a bad
  address, check GPU requests against what the nodes have;
- :mod:`~blockprune.distributed.model_actor`: how many GPUs a model needs, the actor that owns it,
  placement groups that gang-schedule replicas (and optionally their scorers);
- :mod:`~blockprune.distributed.capture`: data-parallel capture into one ActivationStore;
- :mod:`~blockprune.distributed.scoring`: boundaries in the object store once, one task per
  (estimator, run), bounded in flight, retried, cached exactly like the single-process scorer;
- :mod:`~blockprune.distributed.backend`: :class:`RayBackend`, the pipeline's job loop run on actors and
  tasks (one job: model × calibration × trials);
- :mod:`~blockprune.distributed.sweep`: scheduling every job of a sweep spec concurrently.

The job loop itself, the configuration schema and the sweep spec live below, in :mod:`blockprune.pipeline`.

Nothing here is a module-level singleton: every handle (actors, placement groups, object refs)
lives in an object the caller owns, so code runs the same in a driver and inside Ray workers.
"""
