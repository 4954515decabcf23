"""What a person runs beside the pipeline: ``python -m stages.tools.<name>`` (most through ``make``).

predict (``mnist-predict``), serve (``make serve``: the champion over
HTTP), demo (the demo page), tune (Optuna studies), server (the team's
tracking server), remote (``make remote``: DVC's S3 storage), report (the
pull-request report), lock_check and metrics_check (CI's gates). None is a
DVC stage.
"""
