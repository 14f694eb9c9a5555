"""Evaluation: metrics on the test split (`metrics`), `evaluate_checkpoint` (`evaluate`) and the
sample grid image (`grid`).

Kept import-light: `from p2p.evaluation.metrics import psnr` pulls in torch, this package does not.
"""
