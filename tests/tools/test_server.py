"""stages.tools.server's pieces that need no server: the allowed host names and what `make server` prints.
(The servers themselves, PostgreSQL and basic auth: tests/system/test_team.py.)"""

from __future__ import annotations

import pytest

from stages.tools import server


def test_a_server_name_keeps_mlflows_defaults_and_allows_the_name_on_any_port():
    from mlflow.server.security_utils import is_allowed_host_header

    env = server.allowed_hosts(["mlflow.example.com", "ml.lan", "10.0.0.5", "[fd00::1]"], "127.0.0.1:5000", {})
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for host in ("mlflow.example.com:5000", "mlflow.example.com", "ml.lan:8080", "127.0.0.1:5000", "localhost:5000",
                 "10.1.2.3:5000"):  # fmt: skip
        assert is_allowed_host_header(allowed, host), host
    for host in ("evil.example.com:5000", "mlflow.example.com.evil.com:5000", "8.8.8.8:5000"):
        assert not is_allowed_host_header(allowed, host), host


@pytest.mark.parametrize("name", ["fd00::1", "[fd00::1]", "2001:db8::5"])
def test_an_ipv6_server_name_is_allowed_as_clients_send_it(name):
    from mlflow.server.security_utils import is_allowed_host_header

    bare = name.strip("[]")
    allowed = server.allowed_hosts([name], "127.0.0.1:5000", {})["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for host in (f"[{bare}]:5000", f"[{bare}]", "127.0.0.1:5000"):  # a Host header brackets an IPv6 address
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "[2001:db8::6]:5000")
    assert server.local_url(name, 5000) == f"http://[{bare}]:5000"  # what start prints for clients


def test_without_a_name_mlflows_defaults_apply():
    assert server.allowed_hosts([], "127.0.0.1:5000", {}) == {}


@pytest.mark.parametrize("own", ["mlflow.example.com", "mlflow.example.com,localhost"])
def test_a_users_list_that_would_refuse_every_client_here_is_one_line(own):
    # MLflow's variable replaces its defaults, and a name without ':*' matches requests without a port only.
    with pytest.raises(server.ServerError, match=r"MLFLOW_SERVER_ALLOWED_HOSTS refuses 127\.0\.0\.1:5000"):
        server.allowed_hosts([], "127.0.0.1:5000", {"MLFLOW_SERVER_ALLOWED_HOSTS": own})


def test_a_users_list_that_lets_local_clients_in_is_kept_as_it_is():
    own = {"MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow.example.com:*,127.0.0.1:*"}
    assert server.allowed_hosts([], "127.0.0.1:5000", own) == {}  # the server inherits it
    with pytest.raises(server.ServerError, match="not both"):
        server.allowed_hosts(["mlflow.example.com"], "127.0.0.1:5000", own)
    # Checked against the address printed for clients: a server on 10.0.0.5 needs 10.0.0.5 allowed.
    with pytest.raises(server.ServerError, match=r"refuses 10\.0\.0\.5:5000, the address printed for clients"):
        server.allowed_hosts([], "10.0.0.5:5000", {"MLFLOW_SERVER_ALLOWED_HOSTS": "127.0.0.1:*"})
    assert server.allowed_hosts([], "10.0.0.5:5000", {"MLFLOW_SERVER_ALLOWED_HOSTS": "10.0.0.5:*"}) == {}


@pytest.mark.parametrize("name", ["*", "*.example.com", "http://mlflow.example.com", "mlflow.example.com:5000",
                                  "mlflow example", "-bad.example.com", ""])  # fmt: skip
def test_a_server_name_is_a_host_name_or_an_address_never_a_pattern(name):
    # "*" would switch MLflow's Host check off altogether; a port or scheme would print a broken client URL.
    with pytest.raises(server.ServerError, match=r"expected host names or IP addresses"):
        server.allowed_hosts([name], "127.0.0.1:5000", {})


def test_what_start_prints_for_clients():
    local = {"url": "http://127.0.0.1:5000", "host": "127.0.0.1", "port": 5000, "artifacts": "/a"}
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000 " in server.describe(local, None)[1]
    named = {**local, "host": "0.0.0.0", "client_url": "http://mlflow.example.com:5000"}
    assert "export MLFLOW_TRACKING_URI=http://mlflow.example.com:5000 " in server.describe(named, None)[1]
    anywhere = {**local, "host": "0.0.0.0"}
    lines = server.describe(anywhere, None)
    assert "http://127.0.0.1:5000" in lines[1] and "from other machines" in lines[2]


def test_a_start_without_auth_where_users_exist_says_logins_are_off(tmp_path, monkeypatch, capsys):
    state = {"url": "http://127.0.0.1:5000", "host": "127.0.0.1", "port": 5000, "artifacts": "/a"}
    monkeypatch.setattr(server, "start", lambda *args: state)
    assert server.main(["start", "--dir", str(tmp_path)]) == 0
    assert "basic auth is off" not in capsys.readouterr().out
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "users.db").touch()  # an earlier `make server AUTH=1`
    assert server.main(["start", "--dir", str(tmp_path)]) == 0
    assert "server: note: basic auth is off this time" in capsys.readouterr().out
    assert server.main(["start", "--dir", str(tmp_path), "--auth"]) == 0
    assert "basic auth is off" not in capsys.readouterr().out


def server_dir_with_a_cluster_elsewhere(tmp_path):
    """A ``.server`` whose ``pg.json`` records a cluster outside it (as root, in the postgres user's home), none
    running."""
    directory, cluster = tmp_path / ".server", tmp_path / "postgres-home" / "cluster"
    (cluster / "data").mkdir(parents=True)
    directory.mkdir()
    (directory / "pg.json").write_text(f'{{"directory": "{cluster}", "port": 5432}}')
    return directory, cluster


def test_remove_lists_what_it_deletes_and_asks(tmp_path, monkeypatch, capsys):
    directory, cluster = server_dir_with_a_cluster_elsewhere(tmp_path)
    assert server.doomed(directory) == [cluster, directory]
    assert server.confirmed([cluster, directory], yes=False, answer=lambda prompt: "n") is False
    listed = capsys.readouterr().out
    assert f"  {cluster}\n  {directory}\n" in listed and "every run and model" in listed
    assert server.confirmed([directory], yes=False, answer=lambda prompt: " Yes ") is True
    assert server.confirmed([directory], yes=True, answer=lambda prompt: pytest.fail("asked despite --yes")) is True

    def ctrl_d(prompt):
        raise EOFError

    assert server.confirmed([directory], yes=False, answer=ctrl_d) is False


def test_remove_without_a_terminal_deletes_nothing_without_yes(tmp_path, monkeypatch, capsys):
    directory, cluster = server_dir_with_a_cluster_elsewhere(tmp_path)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert server.main(["remove", "--dir", str(directory)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"server: error: remove deletes {cluster}, {directory} (every run and model in them)")
    assert "--yes" in line
    assert directory.exists() and cluster.exists()
    assert server.main(["remove", "--dir", str(directory), "--yes"]) == 0
    assert f"server: removed {cluster}, {directory}" in capsys.readouterr().out
    assert not directory.exists() and not cluster.exists()
    assert server.main(["remove", "--dir", str(directory)]) == 0  # nothing there: nothing to ask
    assert "server: nothing to remove" in capsys.readouterr().out
