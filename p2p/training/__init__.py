"""Training: `step.train_step` (one D-then-G update) and `schedule.build_scheduler` (per-epoch LR
policies) are pure torch; `state` is the resumable checkpoint, `loop` the per-worker Ray Train
entry point (with `validation`, `collectives`, `runtime` and `distributed` for the interface
and placement), `trainer` the driver (`fit`), `run_store` a run's names and checkpoints in any
storage, `lease` one driver per run, `failures` which errors are not retried, `ray_console` what
of Ray reaches the console, and `tracking` the MLflow run."""
