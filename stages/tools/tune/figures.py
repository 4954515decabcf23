"""A study's end: its summary (counts, best value, pruning's savings, throughput) and its figures.

The figures are Optuna's own plots (matplotlib): optimization history,
intermediate values and parameter importances; the trials as ``trials.csv``;
and the best trials as a table (pandas' table plot). ``tune run`` writes them
to ``.tune/figures/<study>/`` and logs them on the study's parent run.
"""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from typing import Any

from stages.lib.files import staged_dir
from stages.tools.tune.liveness import counted
from stages.tools.tune.space import OBJECTIVE


def summary(
    study: Any, since: datetime.datetime | None = None, wall_seconds: float | None = None, workers: int | None = None
) -> dict[str, float]:
    """Counts and best value (the whole study); epochs run and saved by pruning, trials per hour and the share
    of the workers' time spent outside training (the trials that started ``since``, over ``wall_seconds``):
    left out when no trial started then (a study that had its trials already), so that the parent run keeps
    the figures of the last call that ran some rather than zeros."""
    import optuna  # noqa: PLC0415

    state = optuna.trial.TrialState
    trials = counted(study.get_trials(deepcopy=False))
    out: dict[str, float] = {
        "trials_complete": sum(t.state == state.COMPLETE for t in trials),
        "trials_pruned": sum(t.state == state.PRUNED for t in trials),
        "trials_failed": sum(t.state == state.FAIL for t in trials),
    }
    if out["trials_complete"]:
        out[f"best_{OBJECTIVE}"] = study.best_value
        out["best_trial"] = study.best_trial.number
    recent = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and (since is None or (t.datetime_start and t.datetime_start >= since))
    ]
    if not recent:
        return out
    out["epochs_run"] = sum(t.user_attrs.get("epochs_run", 0) for t in recent)
    out["epochs_saved_by_pruning"] = sum(
        t.user_attrs.get("epochs_planned", 0) - t.user_attrs.get("epochs_run", 0)
        for t in recent
        if t.state == state.PRUNED
    )
    train = sum(t.user_attrs.get("train_seconds", 0.0) for t in recent)
    out["train_seconds"] = train
    if wall_seconds and workers:
        out["wall_seconds"] = wall_seconds
        out["trials_per_hour"] = len(recent) * 3600 / wall_seconds
        out["share_outside_training"] = max(0.0, 1 - train / (wall_seconds * workers))
    return out


def draw_figures(study: Any, directory: Path) -> list[str]:
    """Optuna's own plots (matplotlib): optimization history, intermediate values, parameter importances;
    and the best trials as a table (pandas' table plot). Returns the files written. They replace the last
    call's whole (``staged_dir``): none of an earlier figure set stays, and an interrupted call leaves it."""
    with staged_dir(directory) as staging:
        return _draw(study, staging)


def _draw(study: Any, directory: Path) -> list[str]:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import optuna  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    written = []
    plots = {
        "optimization_history.png": optuna.visualization.matplotlib.plot_optimization_history,
        "intermediate_values.png": optuna.visualization.matplotlib.plot_intermediate_values,
        "param_importances.png": optuna.visualization.matplotlib.plot_param_importances,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, plot in plots.items():
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances need 2+ complete trials
                continue
            figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            figure.savefig(directory / name, dpi=100)
            plt.close(figure)
            written.append(name)
        frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration"))
        if len(frame):
            frame.to_csv(directory / "trials.csv", index=False)
            written.append("trials.csv")
            best = frame[frame["state"] == "COMPLETE"].sort_values("value", ascending=False).head(10)
            if len(best):
                best = best.assign(duration=best["duration"].dt.total_seconds().round(1))
                best.columns = [c.removeprefix("params_") for c in best.columns]
                best = best.drop(columns=["state"]).rename(columns={"value": OBJECTIVE, "duration": "seconds"})
                best = best.round(5)
                figure, ax = plt.subplots(figsize=(min(3 + 1.6 * len(best.columns), 24), 0.9 + 0.3 * len(best)))
                ax.axis("off")
                table = pd.plotting.table(ax, best, loc="center", cellLoc="center")
                table.auto_set_font_size(False)
                table.set_fontsize(8)
                ax.set_title(f"study {study.study_name}: best trials by {OBJECTIVE}")
                figure.tight_layout()
                figure.savefig(directory / "best_trials.png", dpi=100)
                plt.close(figure)
                written.append("best_trials.png")
    return written
