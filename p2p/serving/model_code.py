"""MLflow models-from-code entry point: the file logged as the pyfunc's `python_model`.

MLflow copies this file into the logged model and executes it at load time; it only names the
model class (defined, tested and versioned in p2p.serving.pyfunc).
"""

import mlflow

from p2p.serving.pyfunc import Pix2PixPyfunc

mlflow.models.set_model(Pix2PixPyfunc())
