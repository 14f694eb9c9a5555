"""Training: `step.train_step` (one D-then-G update) and `schedule.build_scheduler` (per-epoch LR
policies) are pure torch; the loop and Ray/MLflow wiring live in their own modules."""
