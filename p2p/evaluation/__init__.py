"""Evaluation: image metrics (`metrics`), scoring a generator on batches (`scoring`, shared with
the training loop's validation), the trivial baselines a model must beat (`baselines`),
`evaluate_checkpoint` (`evaluate`), the results page (`report`) and the sample grid (`grid`).

Kept import-light: `from p2p.evaluation.metrics import psnr` pulls in torch, this package does not.
"""
