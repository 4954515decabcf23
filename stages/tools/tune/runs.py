"""A study in MLflow: one parent run per study, one child run per trial, in experiment ``mnist-tune``.

The runs go to the project's MLflow store (``stages.lib.store``), beside the
pipeline's experiment. The parent run holds the space and, at the end, the
study's summary and figures; a trial's child run gets its params at once,
its epochs as they come (``EpochLog``: a few epochs per write) and its end
as the tag ``tune.state`` (COMPLETE, PRUNED or FAIL) and the run's status.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from stages.lib import store, tracking
from stages.params import schema
from stages.tools.tune.space import Space
from stages.tools.tune.storage import describe_storage, storage_url


def experiment_name() -> str:
    """The studies' MLflow experiment: ``<data set>-tune`` of the data set params.yaml names (``mnist-tune``)."""
    from stages.lib.registry import dataset_name  # noqa: PLC0415

    return f"{dataset_name()}-tune"


class Runs:
    """The study's runs in the project's MLflow store (``store.store``), experiment ``<data set>-tune``.

    Every write holds ``tracking.store_lock``: K workers share a SQLite store safely on one machine.
    """

    def __init__(self) -> None:
        self.uri, self.artifact_location = store.store()
        store.preflight(self.uri)
        tracking.quiet_output(os.environ)  # no "View run ... at" lines from a server's client: one line per trial
        from mlflow import MlflowClient  # noqa: PLC0415 - 2 s; once per process

        with tracking.store_lock(self.uri):
            self.client = MlflowClient(self.uri)

    @contextlib.contextmanager
    def lock(self) -> Iterator[Any]:
        with tracking.store_lock(self.uri):
            yield self.client

    def experiment(self) -> str:
        with self.lock() as client:
            return tracking.ensure_experiment(client, self.artifact_location, experiment_name())

    def parent(self, study: Any, space: Space, trials: int) -> str:
        """The study's parent run: created once, marked RUNNING again when the study continues."""
        run_id = study.user_attrs.get("mlflow_parent")
        with self.lock() as client:
            if run_id:
                try:
                    client.update_run(run_id, status="RUNNING")
                    client.set_tag(run_id, "tune.trials", str(trials))
                    return run_id
                except Exception as exc:
                    raise store.TrackingError(
                        f"study '{study.study_name}' logs to MLflow run {run_id}, which this store lacks: "
                        "set MLFLOW_TRACKING_URI to the study's store"
                    ) from exc
        experiment_id = self.experiment()
        tags = {
            "tune.study": study.study_name,
            "tune.space": space.name,
            "tune.trials": str(trials),
            "tune.storage": describe_storage(storage_url()),
            **tracking.git_facts(),
        }
        with self.lock() as client:
            run = client.create_run(experiment_id, run_name=f"study-{study.study_name}", tags=tags)
            client.log_param(run.info.run_id, "space", json.dumps(space.as_dict(), sort_keys=True)[:6000])
        study.set_user_attr("mlflow_parent", run.info.run_id)
        study.set_user_attr("mlflow_experiment", experiment_id)
        return run.info.run_id

    def start_trial(self, study: Any, number: int, config: dict, overrides: dict, retry_of: int | None) -> str:
        tags = {
            "mlflow.parentRunId": study.user_attrs["mlflow_parent"],
            "tune.study": study.study_name,
            "tune.trial": str(number),
            "tune.state": "RUNNING",
            "tune.worker": f"{socket.gethostname()}:{os.getpid()}",
            "tune.overrides": json.dumps(overrides, sort_keys=True),
        }
        if retry_of is not None:
            tags["tune.retry_of"] = str(retry_of)
        from mlflow.entities import Param  # noqa: PLC0415

        flat = schema.flatten(config)
        with self.lock() as client:
            run = client.create_run(
                study.user_attrs["mlflow_experiment"], run_name=f"{study.study_name}-trial-{number}", tags=tags
            )
            client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in flat.items()])
        return run.info.run_id

    def log_epochs(self, run_id: str, rows: list[Mapping[str, float]]) -> None:
        """Per-epoch metrics, several epochs in one write (see ``EpochLog``)."""
        from mlflow.entities import Metric  # noqa: PLC0415

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(row["epoch"])) for row in rows for k, v in row.items() if k != "epoch"]
        if metrics:
            with self.lock() as client:
                client.log_batch(run_id, metrics=metrics)

    def end_trial(
        self,
        run_id: str,
        state: str,
        metrics: Mapping[str, float],
        note: str | None = None,
        rows: list[Mapping[str, float]] = (),
    ) -> None:
        """state: COMPLETE (run FINISHED), PRUNED (KILLED) or FAIL (FAILED), also as the tag ``tune.state``;
        ``rows``: epochs not logged yet. Two writes."""
        from mlflow.entities import Metric, RunTag  # noqa: PLC0415

        now = int(time.time() * 1000)
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")
        tags = [RunTag("tune.state", state)] + ([RunTag("tune.note", note[:500])] if note else [])
        final = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        series = [Metric(k, float(v), now, int(r["epoch"])) for r in rows for k, v in r.items() if k != "epoch"]
        with self.lock() as client:
            client.log_batch(run_id, metrics=series + final, tags=tags)
            client.set_terminated(run_id, status)

    def end_study(self, run_id: str, summary: Mapping[str, float], figures: Path | None, killed: bool) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415

        now = int(time.time() * 1000)
        with self.lock() as client:
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
            if figures is not None:
                client.log_artifacts(run_id, str(figures), "figures")
            client.set_terminated(run_id, "KILLED" if killed else "FINISHED")

    def fail_study(self, run_id: str, status: str = "FAILED") -> None:
        """The parent run after an error in ``make tune`` itself (best effort: the store may be what failed)."""
        with contextlib.suppress(Exception), self.lock() as client:
            client.set_terminated(run_id, status)


class EpochLog:
    """Epoch rows on their way to a trial's MLflow run: written every ``interval`` seconds, not every epoch
    (each write takes the store's lock: with K workers and short epochs it would cost more than it shows).

    By hand rather than MLflow's asynchronous logging, whose batches would be written outside that lock.
    """

    def __init__(self, runs: Runs, run_id: str, interval: float = 10.0) -> None:
        self.runs, self.run_id, self.interval = runs, run_id, interval
        self.rows: list[dict[str, float]] = []
        self.last = time.monotonic()

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        if time.monotonic() - self.last >= self.interval:
            self.runs.log_epochs(self.run_id, self.rows)
            self.rows, self.last = [], time.monotonic()

    def take(self) -> list[dict[str, float]]:
        rows, self.rows = self.rows, []
        return rows
