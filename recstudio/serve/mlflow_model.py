"""MLflow "models from code" entry: MLflow copies this file into each logged model and runs it
on load, so the model holds no pickled Python object (``recstudio.serve.pyfunc``)."""

import mlflow

from recstudio.serve.pyfunc import RecStudioPyfunc

mlflow.models.set_model(RecStudioPyfunc())
