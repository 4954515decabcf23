"""The served model's code: logged with every MLflow model and loaded without the rest of the project.

``mlflow_model.py`` is the pyfunc model ("models from code"), ``classifier.py``
the network plus its input normalization. Both are part of a result's identity
(``stages.lib.identity``): an edit here makes a new model version.
"""
