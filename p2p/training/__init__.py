"""Training: `step.train_step` (one D-then-G update) and `schedule.build_scheduler` (per-epoch LR
policies) are pure torch; `state` is the resumable checkpoint, `loop` the per-worker Ray Train
entry point, `trainer` the driver (`fit`) and `tracking` the MLflow run."""
