"""Hyper-parameter studies on Optuna, shared by any number of workers on any number of machines.

    python -m stages.tools.tune run --study NAME --trials N [--workers K] [--space dense]   (make tune)
    python -m stages.tools.tune worker --study NAME                                       (make tune-worker)
    python -m stages.tools.tune best --study NAME                                         (make tune-best)

A study searches one space of ``tune.yaml`` (params.yaml keys of the model and
train sections), maximizing ``val_accuracy``; the test split is never read.
``run`` validates the space against the params schema, creates the study (or
continues one with the same space) and its MLflow parent run, starts K
long-lived worker processes and waits for them. A worker imports TensorFlow
and loads the prepared arrays once, then asks Optuna for trials until the study
has N: each trains with the train stage's own functions, reports every epoch's
``val_accuracy`` (the median pruner stops hopeless ones) and is one MLflow
child run from its first epoch to its end. ``best`` hands the best trial's
params to ``dvc exp run``, so the winner goes through publish, the registry and
the champion rule like any other result.

Storage: ``TUNE_STORAGE`` (a SQLAlchemy URL, e.g. the team's PostgreSQL) or,
by default, Optuna's journal file ``.tune/optuna.journal`` (safe for several
processes on one machine; SQLite is not, under concurrent writers). A worker
that dies leaves no trial RUNNING: on one machine its process id is gone,
which every other process of the study checks before it asks for a trial;
across machines Optuna's heartbeat (RDB storages) notices the silence. Either
way the trial ends FAIL and is retried once, as a new trial with its params.

The modules, one concern each: ``space`` (the search space and a trial's
params overrides), ``storage`` (Optuna's storage, the studies and the lock
around asking for a trial), ``liveness`` (no trial RUNNING forever: dead
workers, heartbeats, retries), ``runs`` (the MLflow runs), ``worker`` (the
long-lived training loop), ``figures`` (the study's summary and plots) and
``cli`` (the three commands).
"""


class TuneError(RuntimeError):
    """Bad input or an unusable storage; the message is one line."""
