"""Healing: LoRA recovery fine-tuning of a pruned model, in PyTorch Lightning.

Calibration is forward-only; healing is where blockprune trains. Modules, from the bottom up:

- :mod:`~blockprune.healing.config`: :class:`HealConfig` (torch-free, frozen; ``from_spec`` reads a sweep's
  ``heal:`` mapping);
- :mod:`~blockprune.healing.data`: training windows from the TRAINING split only, each token tagged with its
  document id; the step-indexed window order that makes resume and multi-device runs reproduce one process;
- :mod:`~blockprune.healing.source`: the input (pruned checkpoint, or plan + dense model), checked before weights
  load; saving the merged model so it reloads like the pruned one;
- :mod:`~blockprune.healing.lora`: PEFT LoRA on the decoder projections, target-name checks, merging;
- :mod:`~blockprune.healing.module`: the ``LightningModule`` and ``LightningDataModule``;
- :mod:`~blockprune.healing.trainer`: the ``Trainer`` (precision by device, accumulation, clipping, checkpoints,
  validation every N steps) and the clean stop on Ctrl-C / SIGTERM / time budget;
- :mod:`~blockprune.healing.run`: one healing end to end; :mod:`~blockprune.healing.tracking`: its MLflow run.
  Ray Train lives in :mod:`blockprune.distributed.heal`.

Why the ``lightning`` package and not ``pytorch-lightning``: both ship the same trainer (``lightning.pytorch``
is ``pytorch_lightning`` under the unified package's namespace), but a process must use one namespace only —
a ``pytorch_lightning`` callback is not a ``lightning.pytorch`` callback to the other's Trainer. Ray Train's
Lightning integration (``RayDDPStrategy``, ``RayFSDPStrategy``, ``RayLightningEnvironment``) imports
``lightning.pytorch`` first and falls back to ``pytorch_lightning`` only when ``lightning`` is absent, and the
GPU machine images this project targets ship ``lightning``. So ``lightning`` is the dependency and
``lightning.pytorch`` the one namespace every path here (local, Ray, GPU image) imports. (``lightning`` 2.6
itself depends on ``pytorch-lightning``, so both distributions get installed; blockprune never imports
``pytorch_lightning``.)
"""
