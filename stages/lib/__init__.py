"""The library the stages and tools share: paths, files, data, the networks, MLflow tracking and the registry.

Only imported, never run. Each module holds one concern; a DVC stage lists in
``dvc.yaml`` exactly the modules of this package that it imports.
"""
