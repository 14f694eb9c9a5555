"""Evaluation: image metrics (`metrics`), scoring a generator on batches (`scoring`, shared with
the training loop's validation), `evaluate_checkpoint` (`evaluate`) and the sample grid (`grid`).

Kept import-light: `from p2p.evaluation.metrics import psnr` pulls in torch, this package does not.
"""
