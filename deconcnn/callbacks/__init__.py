"""Lightning callbacks, one per logging requirement, each usable in any Lightning project.

- `LossSlopeLogger`: a `train` record every training batch, a `val` record every validation.
- `CurvatureMonitor`: a `curvature` record (lambda_max, Hessian trace) every N optimizer steps.
- `NoiseMonitor`: a `noise` record (loss-curve and gradient noise) every N epochs.
- `MetricsJsonlLogger` (a Logger) and `MetricsLogPosition`: this project's metric log,
  `<run_dir>/metrics.jsonl`, and its position in checkpoints for exact resume.

The callbacks log through whatever `trainer.loggers` holds (`metrics_logger.log_record`): a
`MetricsJsonlLogger` gets every record whole (the project's default and source of truth, keys as
deconcnn.runlog.schema and docs/metrics.md define them); any other Lightning logger (CSV,
TensorBoard, W&B) gets `<kind>/<key>` floats, the per-batch `train` records thinned to every
`trainer.log_every_n_steps` steps. No logger needs the others, and none is required.

They need nothing of this project's module or data: `training_step` may return a plain loss or a
dict with "loss" (and "acc"); the monitors take their fixed batch from a `batch=` argument or from
`datamodule.fixed_batch`, and fall back to the LightningModule itself and cross-entropy for the
network and loss (see each class).
"""
