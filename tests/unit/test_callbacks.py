"""Callbacks only where allowed (issue 11, point 4): the allow-list, refused addresses, DNS checked at connect time,
no redirects. DNS is a stub (`resolver`), HTTP is `responses` or a real server on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from discovery.engine.callbacks import CallbackPolicy, CallbackRefused, parse_entry, session
from discovery.engine.settings import ConfigError, load_settings
from tests.conftest import SECRET, write_config

PUBLIC = "93.184.216.34"


def policy(*allow: str, networks: tuple[str, ...] = (), dns: dict[str, list[str]] | None = None) -> CallbackPolicy:
    table = dns if dns is not None else {"helpdesk.example.net": [PUBLIC]}

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]

    from discovery.engine.callbacks import parse_network

    return CallbackPolicy(tuple(parse_entry(a) for a in allow), tuple(parse_network(n) for n in networks), resolve)


def test_the_allow_list_matches_scheme_host_and_port() -> None:
    p = policy("https://helpdesk.example.net", "https://*.hooks.example.org:8443",
               dns={"helpdesk.example.net": [PUBLIC], "a.hooks.example.org": [PUBLIC]})
    p.check("https://helpdesk.example.net/dsar?x=1")
    p.check("https://HELPDESK.example.net.:443/dsar")  # case, trailing dot and the default port are the same host
    p.check("https://a.hooks.example.org:8443/x")
    for url, why in [("http://helpdesk.example.net/dsar", "not in api.callback_allow"),  # scheme
                     ("https://helpdesk.example.net:8443/", "not in api.callback_allow"),  # port
                     ("https://evil.example.net/", "not in api.callback_allow"),  # host
                     ("https://helpdesk.example.net.evil.com/", "not in api.callback_allow"),
                     ("https://hooks.example.org:8443/", "not in api.callback_allow"),  # *. needs a sub-domain
                     ("ftp://helpdesk.example.net/", "http:// or https://"),
                     ("https://helpdesk.example.net:99999/", "not a valid URL")]:
        with pytest.raises(CallbackRefused, match=why):
            p.check(url)
    with pytest.raises(CallbackRefused, match="callback_allow is empty"):
        policy().check("https://helpdesk.example.net/")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:169.254.169.254",
                                     "::ffff:127.0.0.1", "224.0.0.1"])
def test_a_listed_name_resolving_to_a_non_public_address_is_refused(address: str) -> None:
    p = policy("https://helpdesk.example.net", dns={"helpdesk.example.net": [address]})
    with pytest.raises(CallbackRefused, match="non-public address"):
        p.check("https://helpdesk.example.net/dsar")


def test_every_address_must_pass_and_listed_networks_or_literals_are_allowed() -> None:
    mixed = policy("https://helpdesk.example.net", dns={"helpdesk.example.net": [PUBLIC, "10.0.0.5"]})
    with pytest.raises(CallbackRefused, match=r"10\.0\.0\.5"):
        mixed.check("https://helpdesk.example.net/")
    internal = policy("https://helpdesk.example.net", networks=("10.0.0.0/8",),
                      dns={"helpdesk.example.net": ["10.0.0.5"]})
    internal.check("https://helpdesk.example.net/")
    # an IP literal in the allow-list is that address, listed on purpose; another loopback address is not
    literal = policy("http://127.0.0.1:9000", "http://[::1]:9000", dns={})
    literal.check("http://127.0.0.1:9000/callback")
    literal.check("http://[0:0::1]:9000/callback")
    with pytest.raises(CallbackRefused):
        literal.check("http://127.0.0.2:9000/callback")
    with pytest.raises(CallbackRefused, match="does not resolve"):
        policy("https://nowhere.example.net", dns={}).check("https://nowhere.example.net/")


def test_settings_refuse_bad_entries_and_a_default_callback_outside_the_list(tmp_path: Path) -> None:
    config = write_config(tmp_path, "sqlite:///x.db")
    env = {"DSAR_SECRET_KEY": SECRET}
    settings = load_settings(config, {**env, "DSAR_API_CALLBACK_ALLOW": '["https://helpdesk.example.net:8443"]',
                                      "DSAR_API_CALLBACK_NETWORKS": '["10.0.0.0/8"]'})
    assert settings.api.callback_allow == ["https://helpdesk.example.net:8443"]
    for extra, why in [({"DSAR_API_CALLBACK_ALLOW": '["helpdesk.example.net"]'}, "http:// or https://"),
                       ({"DSAR_API_CALLBACK_ALLOW": '["https://h.example.net/path"]'}, "without a path"),
                       ({"DSAR_API_CALLBACK_NETWORKS": '["10.0.0.0/33"]'}, "not an address or network"),
                       ({"DSAR_API_CALLBACK_URL": "http://169.254.169.254/latest"}, "callback_allow is empty")]:
        with pytest.raises(ConfigError, match=why):
            load_settings(config, {**env, **extra})


# -- call time ---------------------------------------------------------------------------------

class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.server.calls.append(self.path)  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/redirect":
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:1/latest/meta-data")
        else:
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.calls = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_session_connects_to_the_checked_address_and_rechecks_at_connect(receiver: ThreadingHTTPServer) -> None:
    port = receiver.server_address[1]
    answers = {"hooks.test": ["127.0.0.1"]}
    p = policy(f"http://hooks.test:{port}", networks=("127.0.0.0/8",), dns=answers)
    with session(p) as s:  # the name exists only in the stub: the connection uses the checked address
        assert s.post(f"http://hooks.test:{port}/ok", data=b"{}", timeout=5).status_code == 204
    assert receiver.calls == ["/ok"]  # type: ignore[attr-defined]

    # DNS rebinding: public when checked at intake, loopback by the time dsar connects
    answers["rebind.test"] = [PUBLIC]
    rebinding = policy(f"http://rebind.test:{port}", dns=answers)
    rebinding.check(f"http://rebind.test:{port}/x")
    answers["rebind.test"] = ["127.0.0.1"]
    with session(rebinding) as s, pytest.raises(CallbackRefused, match="non-public"):
        s.post(f"http://rebind.test:{port}/x", data=b"{}", timeout=5)
    assert receiver.calls == ["/ok"]  # type: ignore[attr-defined]  # nothing reached the server


def test_redirects_are_not_followed(receiver: ThreadingHTTPServer) -> None:
    port = receiver.server_address[1]
    p = policy(f"http://127.0.0.1:{port}", dns={})
    with session(p) as s:
        resp = s.post(f"http://127.0.0.1:{port}/redirect", data=b"{}", timeout=5)
    assert resp.status_code == 307
    assert receiver.calls == ["/redirect"]  # type: ignore[attr-defined]


def test_redirects_are_not_followed_with_responses() -> None:
    with responses.RequestsMock() as mock:
        mock.post("https://helpdesk.example.net/dsar", status=302,
                  headers={"Location": "http://169.254.169.254/latest/meta-data"})
        with session(policy("https://helpdesk.example.net")) as s:
            assert s.post("https://helpdesk.example.net/dsar", json={}).status_code == 302
        assert len(mock.calls) == 1  # the metadata URL was never asked for


def test_no_proxies_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://10.9.9.9:3128")
    s = session(policy("https://helpdesk.example.net"))
    assert s.trust_env is False
    assert requests.utils.get_environ_proxies("https://helpdesk.example.net")  # the variable is there ...
    assert s.merge_environment_settings("https://helpdesk.example.net/", {}, None, None, None)["proxies"] == {}
