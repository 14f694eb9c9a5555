"""Evaluation: metrics on the test split (`metrics`), and `evaluate_checkpoint` (`evaluate`).

Kept import-light: `from p2p.evaluation.metrics import psnr` pulls in torch, this package does not.
"""
