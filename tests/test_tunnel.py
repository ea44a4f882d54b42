"""The ngrok tunnel: real pyngrok driving the stand-in agent (tests/doubles/ngrok_agent.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyngrok import ngrok, process
from pyngrok.exception import PyngrokNgrokInstallError

from tests.doubles.ngrok_agent import FakeNgrokAgent, install
from voicebridge.tunnel import TunnelError, open_tunnel

TOKEN = "ngrok-test-authtoken-42"
DOMAIN = "voicebridge-dev.ngrok-free.app"


@pytest.fixture
def agent(tmp_path: Path) -> FakeNgrokAgent:
    return install(tmp_path / "bin", authtoken=TOKEN, domains=(DOMAIN,))


def test_opens_an_https_endpoint_to_our_port_and_closes_it(
    agent: FakeNgrokAgent, tmp_path: Path
) -> None:
    tunnel = open_tunnel(
        8123, authtoken=TOKEN, ngrok_path=agent.path, config_path=tmp_path / "ngrok.yml"
    )

    assert tunnel.public_url.startswith("https://")
    assert tunnel.public_url.endswith(".ngrok-free.app")
    (create,) = agent.events("create")
    assert create["request"]["upstream"] == {"url": "http://127.0.0.1:8123"}
    assert agent.events("start")[0]["authtoken_ok"] is True

    tunnel.close()

    assert [e["name"] for e in agent.events("delete")] == [create["request"]["name"]]
    assert not process.is_process_running(str(agent.path))


def test_uses_the_fixed_domain(agent: FakeNgrokAgent, tmp_path: Path) -> None:
    tunnel = open_tunnel(
        8123,
        authtoken=TOKEN,
        domain=DOMAIN,
        ngrok_path=agent.path,
        config_path=tmp_path / "ngrok.yml",
    )
    try:
        assert tunnel.public_url == f"https://{DOMAIN}"
        assert agent.events("create")[0]["request"]["url"] == f"https://{DOMAIN}"
    finally:
        tunnel.close()


def test_a_rejected_authtoken_is_readable_and_never_repeated(
    agent: FakeNgrokAgent, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(TunnelError) as caught:
        open_tunnel(
            8123,
            authtoken="wrong-token-777",
            ngrok_path=agent.path,
            config_path=tmp_path / "ngrok.yml",
        )

    message = str(caught.value)
    assert message.startswith("ngrok rejected NGROK_AUTHTOKEN (ERR_NGROK_107)")
    assert "dashboard.ngrok.com/get-started/your-authtoken" in message
    output = capfd.readouterr()
    assert "wrong-token-777" not in message + output.out + output.err
    assert not process.is_process_running(str(agent.path))


def test_a_domain_outside_the_account_is_readable(agent: FakeNgrokAgent, tmp_path: Path) -> None:
    with pytest.raises(TunnelError) as caught:
        open_tunnel(
            8123,
            authtoken=TOKEN,
            domain="someone-else.ngrok.app",
            ngrok_path=agent.path,
            config_path=tmp_path / "ngrok.yml",
        )
    assert str(caught.value).startswith(
        "ngrok could not open https://someone-else.ngrok.app (NGROK_DOMAIN):"
    )
    assert "ERR_NGROK_319" in str(caught.value)
    assert not process.is_process_running(str(agent.path))


def test_an_agent_that_cannot_run_is_readable(tmp_path: Path) -> None:
    broken = tmp_path / "ngrok"
    broken.write_text("not a program\n")
    broken.chmod(0o755)
    with pytest.raises(TunnelError, match=r"^cannot run the ngrok agent: "):
        open_tunnel(8123, authtoken=TOKEN, ngrok_path=broken, config_path=tmp_path / "ngrok.yml")


def test_an_agent_that_cannot_be_downloaded_says_to_set_ngrok_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """At the pyngrok call boundary: a real download would need the internet."""

    def no_download(*args: object, **kwargs: object) -> None:
        raise PyngrokNgrokInstallError("An error occurred while downloading ngrok")

    monkeypatch.setattr(ngrok, "connect", no_download)
    with pytest.raises(TunnelError, match=r"could not be downloaded.*set NGROK_PATH"):
        open_tunnel(8123, authtoken=TOKEN, config_path=tmp_path / "ngrok.yml")
