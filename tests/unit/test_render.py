"""Unit tests for labctl.render and the flannel templates (reference sections 1, 2 and 8)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import jinja2
import pytest

from labctl.render import TEMPLATE_DIR, render

SUBNET_ENV_ARGS: dict[str, Any] = {
    "network": IPv4Network("10.244.0.0/16"),
    "subnet_gateway": IPv4Address("10.244.1.1"),
    "subnet_prefixlen": 24,
    "mtu": 1450,
    "ipmasq": True,
}


def test_templates_exist() -> None:
    for name in ("subnet.env.j2", "10-flannel.conflist.j2", "net-conf.json.j2"):
        assert (TEMPLATE_DIR / name).is_file()


def test_subnet_env_matches_reference_format() -> None:
    # Reference §2: these four lines, in this order (no IPv6 lines when IPv6 is off).
    assert render("subnet.env.j2", **SUBNET_ENV_ARGS) == (
        "FLANNEL_NETWORK=10.244.0.0/16\n"
        "FLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )


def test_subnet_env_host_gw_and_no_masq() -> None:
    out = render(
        "subnet.env.j2",
        network="10.1.0.0/16",
        subnet_gateway="10.1.15.1",
        subnet_prefixlen=24,
        mtu=1500,
        ipmasq=False,
    )
    assert out.splitlines() == [
        "FLANNEL_NETWORK=10.1.0.0/16",
        "FLANNEL_SUBNET=10.1.15.1/24",
        "FLANNEL_MTU=1500",
        "FLANNEL_IPMASQ=false",
    ]


@pytest.mark.parametrize("missing", sorted(SUBNET_ENV_ARGS))
def test_missing_variable_raises(missing: str) -> None:
    args = {k: v for k, v in SUBNET_ENV_ARGS.items() if k != missing}
    with pytest.raises(jinja2.UndefinedError, match=missing):
        render("subnet.env.j2", **args)


def test_net_conf_missing_variables_raise() -> None:
    with pytest.raises(jinja2.UndefinedError, match="network"):
        render("net-conf.json.j2", backend={"Type": "vxlan"})
    # `backend | tojson` hands the StrictUndefined to json.dumps, which fails with a
    # TypeError rather than UndefinedError: still an error, never a silently empty file.
    with pytest.raises((jinja2.UndefinedError, TypeError)):
        render("net-conf.json.j2", network="10.244.0.0/16")


def test_unknown_template_raises() -> None:
    with pytest.raises(jinja2.TemplateNotFound):
        render("no-such.j2")


@pytest.mark.parametrize(
    "backend",
    [
        {"Type": "vxlan", "VNI": 1, "Port": 8472},
        {"Type": "vxlan", "VNI": 1, "Port": 8472, "DirectRouting": True},
        {"Type": "host-gw"},
    ],
)
def test_net_conf_json_parses_with_backend(backend: dict[str, Any]) -> None:
    out = render("net-conf.json.j2", network=IPv4Network("10.244.0.0/16"), backend=backend)
    assert json.loads(out) == {"Network": "10.244.0.0/16", "Backend": backend}


def test_net_conf_json_escapes_strings() -> None:
    # tojson, not string pasting: a quote in an option must not break the JSON.
    backend = {"Type": 'we"ird', "Note": "a\\b"}
    out = render("net-conf.json.j2", network="10.244.0.0/16", backend=backend)
    assert json.loads(out)["Backend"] == backend


def test_conflist_matches_shipped_cni_conf() -> None:
    # Reference §8: the cni-conf.json of kube-flannel.yml.
    assert json.loads(render("10-flannel.conflist.j2")) == {
        "name": "cbr0",
        "cniVersion": "0.3.1",
        "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def test_rendered_files_end_with_newline() -> None:
    assert render("subnet.env.j2", **SUBNET_ENV_ARGS).endswith("\n")
    assert render("10-flannel.conflist.j2").endswith("\n")
