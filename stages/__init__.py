"""DVC pipeline stages for MNIST: fetch, preprocess, train, evaluate.

Each stage is a module runnable as ``python -m stages.<name>``; its ``main()``
only reads params and calls the plain functions that hold the logic.
"""
