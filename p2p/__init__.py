"""p2p: paired image-to-image translation (pix2pix) from versioned data to a model registry.

Importing `p2p` is cheap: heavy dependencies (torch, ray, mlflow, prefect) are imported by the
modules that need them.
"""

__version__ = "0.1.0"
