"""Prefect flows: thin orchestration over the `p2p` library (which runs without Prefect).

- `data_flow`: prepare -> validate -> version (DVC + push) -> shard -> data version
- `training_flow`: train (Ray) -> evaluate -> register (MLflow) -> promotion gate
- `retrain_flow`: compare the latest data version with the champion's lineage; skip or run both
- `demo`: `p2p demo`, retrain_flow on the embedded defaults, then a summary with the baselines
- `deploy`: the cron-scheduled retrain deployment (`python -m pipelines.deploy`, prefect.yaml)

Flows run in the project directory (the git + DVC repository), like `dvc repro`.
"""
