"""The code MLflow runs to build an embinject pyfunc model ("models from code": nothing is pickled)."""

from mlflow.models import set_model

from embinject.serving import EmbinjectModel

set_model(EmbinjectModel())
