"""The webhook address policy (tunegate/netguard.py) as a table: every spelling of an internal address is
refused, public ones pass, the allowlist permits what it names, and delivery-time resolution refuses a name
if ANY of its addresses is refused (the resolver is a plain function here: what a DNS server would answer)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from tunegate.netguard import (
    AddressRefused,
    Allowlist,
    Resolver,
    address_problem,
    bounded,
    check_url,
    outcome,
    parse_ip,
    recorded_outcome,
    resolve_checked,
)
from tunegate.settings import Settings

NONE = Allowlist()

REFUSED = [
    # loopback in every spelling
    "http://127.0.0.1/",
    "http://127.0.0.1:5432/",
    "http://127.0.0.1:6379/",
    "http://127.8.9.10/",
    "http://2130706433/",  # decimal integer
    "http://0x7f000001/",  # hex integer
    "http://0x7f.1/",  # hex, two parts
    "http://0177.0.0.1/",  # octal
    "http://0177.1/",
    "http://127.1/",
    "http://127.0.1/",
    "http://127.0.0.1./",  # trailing dot
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://１２７.０.０.１/",  # fullwidth digits, which IDNA maps to 127.0.0.1
    # names that only exist inside a network
    "http://localhost/",
    "http://LOCALHOST:8080/",
    "http://localhost./",
    "http://localhost../",
    "http://ⓛocalhost/",  # IDNA maps it to localhost
    "http://api.localhost/",
    "http://printer.local/",
    "http://metadata.google.internal/",
    "http://router.home.arpa/",
    "http://redis:6379/",  # a compose service name
    "http://postgres:5432/",
    # unspecified, private, link-local, shared, multicast, reserved, documentation
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://10.0.0.1/",
    "http://167772161/",  # 10.0.0.1 as an integer
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://[::ffff:192.168.1.1]/",
    "http://169.254.169.254/",  # cloud metadata
    "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fd00::1]/",
    "http://[fec0::1]/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://192.0.2.1/",
    "http://[2001:db8::1]/",
    "http://198.18.0.1/",
    # userinfo and parser tricks, numeric names that are not valid addresses
    "http://hooks.example.com@127.0.0.1/",
    "http://user:secret@hooks.example.com/",
    "http://127.0.0.1\\@hooks.example.com/",
    "http://1.2.3.4.5/",
    "http://256.0.0.1/",
    "http://08.0.0.1/",
]

PUBLIC = [
    "http://93.184.215.14/",
    "https://93.184.215.14:8443/hook",
    "http://[2606:2800::1]/",
    "http://[::ffff:93.184.215.14]/",  # mapped, of a public address
    "http://[2002:5db8:d70e::1]/",  # 6to4, of a public address
    "http://[64:ff9b::5db8:d70e]/",  # NAT64, of a public address
    "http://1572395790/",  # 93.184.215.14 as an integer: odd but public
    "https://hooks.example.com/tunegate",
    "https://hooks.example.com./tunegate",
    "https://bücher.example/hook",
    "http://8.8.8.8:5432/",  # a public address on any port
]


@pytest.mark.parametrize("url", REFUSED)
def test_an_internal_address_in_any_spelling_is_refused(url: str) -> None:
    with pytest.raises(AddressRefused) as exc:
        check_url(url, NONE)
    assert exc.value.param == "url" and exc.value.code == "webhook_url_not_allowed"
    assert "'url'" in exc.value.message


@pytest.mark.parametrize("url", PUBLIC)
def test_a_public_address_is_accepted(url: str) -> None:
    check_url(url, NONE)


@pytest.mark.parametrize(
    ("literal", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1.0x10", "10.1.0.16"),
        ("0", "0.0.0.0"),
        ("1.2.3.4.", "1.2.3.4"),
        ("[::1]", "::1"),
        ("hooks.example.com", None),
        ("1.2.3.4.5", None),
        ("256.1.1.1", None),
        ("4294967296", None),
    ],
)
def test_ipv4_literals_are_read_as_inet_aton_reads_them(literal: str, address: str | None) -> None:
    got = parse_ip(literal)
    assert (str(got) if got is not None else None) == address


def test_the_reason_is_named() -> None:
    problems = {
        a: address_problem(ipaddress.ip_address(a))
        for a in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1", "::ffff:10.0.0.1")
    }
    assert problems == {
        "127.0.0.1": "a loopback address",
        "10.0.0.1": "a private address",
        "169.254.169.254": "a link-local address",
        "0.0.0.0": "an unspecified address",
        "224.0.0.1": "a multicast address",
        "::ffff:10.0.0.1": "a private address (an IPv6 form of 10.0.0.1)",
    }
    with pytest.raises(AddressRefused, match=r"'2130706433' is 127\.0\.0\.1, a loopback address"):
        check_url("http://2130706433/", NONE)


def test_the_allowlist_permits_the_networks_and_hosts_it_names() -> None:
    allow = Allowlist.parse(["127.0.0.1/32", "10.0.0.0/8", "receiver.internal", "*.corp.internal", "::1"])
    for url in (
        "http://127.0.0.1:8000/hook",
        "http://2130706433/",  # the same address spelled otherwise
        "http://[::ffff:127.0.0.1]/",  # and its IPv4-mapped form
        "http://10.200.3.4/",
        "http://[::1]/",
        "http://receiver.internal/",
        "http://RECEIVER.internal./",
        "http://a.b.corp.internal/",
    ):
        check_url(url, allow)
    for url in (
        "http://127.0.0.2/",
        "http://192.168.1.1/",
        "http://other.internal/",
        "http://corp.internal/",
        "http://xcorp.internal/",
    ):
        with pytest.raises(AddressRefused):
            check_url(url, allow)


@pytest.mark.parametrize("entry", ["", "*", "not a host", "10.0.0.0/33", "http://x.example/"])
def test_a_bad_allowlist_entry_is_named_when_settings_load(entry: str) -> None:
    with pytest.raises(ValueError, match="TUNEGATE_WEBHOOK_ALLOWED_TARGETS"):
        Settings(webhook_allowed_targets=["127.0.0.1/32", entry])


def _dns(table: dict[str, list[str]]) -> tuple[list[str], Resolver]:
    asked: list[str] = []

    def resolve(host: str, port: int) -> Sequence[str]:
        asked.append(host)
        if host not in table:
            raise OSError(f"{host} does not resolve")
        return table[host]

    return asked, resolve


def test_delivery_refuses_a_name_if_any_of_its_addresses_is_internal() -> None:
    asked, resolve = _dns(
        {
            "hooks.example.com": ["93.184.215.14", "2606:2800::1"],
            "rebind.example.com": ["93.184.215.14", "127.0.0.1"],
            "mapped.example.com": ["::ffff:169.254.169.254"],
            "inside.example.com": ["10.1.2.3"],
        }
    )
    got = resolve_checked("hooks.example.com", 443, NONE, resolve)
    assert [str(a) for a in got] == ["93.184.215.14", "2606:2800::1"]
    for host, why in [
        ("rebind.example.com", "resolves to 127.0.0.1, a loopback"),
        ("mapped.example.com", "link-local"),
        ("inside.example.com", "private"),
    ]:
        with pytest.raises(AddressRefused, match=why):
            resolve_checked(host, 443, NONE, resolve)
    with pytest.raises(OSError):
        resolve_checked("nowhere.example.com", 443, NONE, resolve)
    # a literal or a private-only name is refused without asking DNS
    asked.clear()
    for host in ("127.0.0.1", "localhost.", "0x7f.1"):
        with pytest.raises(AddressRefused):
            resolve_checked(host, 80, NONE, resolve)
    assert asked == []
    # the allowlist: a network lets its addresses through, a named host any address
    inside = Allowlist.parse(["10.0.0.0/8"])
    assert [str(a) for a in resolve_checked("inside.example.com", 80, inside, resolve)] == ["10.1.2.3"]
    named = Allowlist.parse(["rebind.example.com"])
    assert len(resolve_checked("rebind.example.com", 80, named, resolve)) == 2


def test_registration_also_refuses_a_name_that_resolves_inside() -> None:
    _, resolve = _dns({"hooks.example.com": ["93.184.215.14"], "sneaky.example.com": ["127.0.0.1"]})
    check_url("https://hooks.example.com/x", NONE, resolve)
    check_url("https://unknown.example.com/x", NONE, bounded(resolve, 1.0))
    with pytest.raises(AddressRefused, match="'sneaky.example.com' resolves to 127.0.0.1"):
        check_url("https://sneaky.example.com/x", NONE, bounded(resolve, 1.0))


def test_what_a_tenant_sees_is_a_class() -> None:
    assert [outcome(c) for c in (200, 204, 302, 403, 404, 503, 999)] == [
        "2xx",
        "2xx",
        "3xx",
        "4xx",
        "4xx",
        "5xx",
        "invalid_response",
    ]
    assert outcome(None) == "connection_failed" and outcome(None, refused=True) == "refused_by_policy"
    assert recorded_outcome(None, None) is None
    assert recorded_outcome(403, "the receiver answered HTTP 403") == "4xx"
    assert recorded_outcome(None, "refused_by_policy") == "refused_by_policy"
    # a row written before only classes were kept still shows no remote text
    assert recorded_outcome(None, "ConnectError: [Errno 111] Connection refused") == "connection_failed"
