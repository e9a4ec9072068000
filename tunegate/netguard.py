"""Where webhooks may be sent: the address policy of registration (``models/webhooks.py``, for the API and
the console alike) and delivery (``tunegate/webhook_send.py``), so a tenant's URL cannot reach the provider's
own network (SSRF).

Default: only public addresses. A host is refused when it is, or resolves to, an address that is loopback,
private, link-local, unspecified, multicast, reserved, shared (100.64/10), site-local or otherwise not
globally routable; IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
``::a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) are judged by that address. IPv4 literals are read
the way ``inet_aton`` and browsers read them (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``), host
names without their trailing dots, and names that only exist inside a network (``localhost`` and
``*.localhost``, ``*.local``, ``*.internal``, ``*.localdomain``, ``*.home.arpa``, single labels such as a
compose service name) are refused without asking DNS.

``Allowlist`` (``Settings.webhook_allowed_targets``) lets an operator permit named hosts
(``receiver.internal``, ``*.corp.example``) or networks (``10.0.0.0/8``, ``127.0.0.1/32``) for local testing
and private deployments.

Registration checks the URL's literal host (``check_url``); delivery resolves the name and refuses it if ANY
address is refused (``resolve_checked``), and then connects to one of those checked addresses, never to the
name again, so a DNS answer that changes between the check and the connection (rebinding) gains nothing.
The resolver is a parameter: ``system_resolver`` (``getaddrinfo``) unless a caller passes its own.

``outcome`` turns an attempt into what a tenant may see of it: a status class, never the receiver's words.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from tunegate.errors import InvalidRequest

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]  # (host, port) -> the host's addresses, as text

SETTING = "TUNEGATE_WEBHOOK_ALLOWED_TARGETS"
# Names that never resolve to a public address: RFC 6761/6762/8375, ICANN's .internal, common LAN suffixes.
PRIVATE_SUFFIXES = ("localhost", "localdomain", "local", "internal", "home.arpa", "lan")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_IPV4_PART = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)

# What a tenant sees of an attempt (the delivery log): a status class or why nothing was answered.
Outcome = Literal["2xx", "3xx", "4xx", "5xx", "invalid_response", "connection_failed", "refused_by_policy"]


class AddressRefused(InvalidRequest):
    """The URL's host is, or resolves to, an address webhooks may not reach (400 naming ``url``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="url", code="webhook_url_not_allowed")


# --- the allowlist ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Allowlist:
    """Hosts and networks an operator allows besides public addresses (empty: none)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()  # normalized names; "*.example" allows every name under example
    wildcards: tuple[str, ...] = ()  # ".example" suffixes of the "*." entries

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        """From ``["10.0.0.0/8", "127.0.0.1", "receiver.internal", "*.corp.example"]``; ``ValueError`` naming
        the entry that is neither a network, an address nor a host name."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        wildcards: list[str] = []
        for raw in entries:
            entry = raw.strip()
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = normalize_name(entry.removeprefix("*."))
            if not name or not re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", name) or ".." in name:
                raise ValueError(
                    f"{SETTING}: {raw!r} is neither an IP network (10.0.0.0/8), an address nor a host name"
                )
            if entry.startswith("*."):
                wildcards.append("." + name)
            else:
                hosts.add(name)
        return cls(tuple(networks), frozenset(hosts), tuple(wildcards))

    def allows_host(self, host: str) -> bool:
        name = normalize_name(host)
        return name in self.hosts or any(name.endswith(w) for w in self.wildcards)

    def allows_ip(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        embedded = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        if embedded is not None:
            candidates.append(embedded)
        return any(c in net for c in candidates for net in self.networks if c.version == net.version)

    def __bool__(self) -> bool:
        return bool(self.networks or self.hosts or self.wildcards)


# --- addresses ----------------------------------------------------------------------------------------
def normalize_name(host: str) -> str:
    """Lowercase, without brackets and trailing dots (``LocalHost..`` -> ``localhost``)."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.lower().rstrip(".")


def _ipv4_number(part: str) -> int | None:
    """One part of an IPv4 literal: decimal, ``0x`` hex or ``0`` octal (as ``inet_aton`` reads it)."""
    if not _IPV4_PART.fullmatch(part):
        return None
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part[0] == "0":
        return int(part, 8) if all(c in "01234567" for c in part) else None
    return int(part)


def looks_numeric(host: str) -> bool:
    """The last label is a number (decimal, hex or octal): resolvers read such a host as an IPv4 literal."""
    name = normalize_name(host)
    return bool(name) and _IPV4_PART.fullmatch(name.rsplit(".", 1)[-1]) is not None


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read as an IPv4 literal in any form ``inet_aton`` takes (1 to 4 parts, each decimal, hex or
    octal, the last filling the remaining bytes), or None when it is not one."""
    parts = normalize_name(host).split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    *head, last = values
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(values)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def parse_ip(host: str) -> IPAddress | None:
    """``host`` (from a URL, brackets or not) as an IP address in any literal form, or None (a name)."""
    name = normalize_name(host)
    if ":" in name:
        try:
            return ipaddress.IPv6Address(name)
        except ValueError:
            return None
    return parse_ipv4(name)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: IPv4-mapped, IPv4-compatible, 6to4 or NAT64 (well-known)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (``"a loopback address"``, ``"a private address (an IPv6 form of
    10.0.0.1)"`` ...), or None when it is one."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            inner = address_problem(embedded)
            if inner is not None:
                return f"{inner} (an IPv6 form of {embedded})"
            if ip in _IPV4_COMPATIBLE:
                return "a reserved address (a deprecated IPv4-compatible IPv6 form)"
            return None
    why = _kind(ip)
    return None if why is None else f"{'an' if why[0] in 'aeiou' else 'a'} {why} address"


def _kind(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return "local-use NAT64"
        if ip.is_site_local:
            return "site-local"
    checks: list[tuple[bool, str]] = [
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED, "shared (carrier-grade NAT)"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "non-global"),
    ]
    return next((why for bad, why in checks if bad), None)


def check_ip(ip: IPAddress, allow: Allowlist, *, host: str | None = None) -> None:
    """``AddressRefused`` unless ``ip`` is public or in an allowed network."""
    why = address_problem(ip)
    if why is None or allow.allows_ip(ip):
        return
    if host is None:
        of = f"its host is {ip}"
    elif parse_ip(host) is not None:
        of = f"its host {host!r} is {ip}"
    else:
        of = f"{host!r} resolves to {ip}"
    raise AddressRefused(
        f"'url' cannot be used for webhooks: {of}, {why}; webhooks may only reach public "
        f"addresses unless the provider allows the host or network ({SETTING})"
    )


def check_name(host: str, allow: Allowlist) -> IPAddress | None:
    """The literal checks of one host: an IP literal (any form) must be public or allowed, a name must not
    be a private-only one (unless allowed by name). Returns the literal address, or None for a name."""
    name = normalize_name(host)
    ip = parse_ip(name)
    if ip is not None:
        check_ip(ip, allow, host=None if host == str(ip) else host)
        return ip
    if allow.allows_host(name):
        return None
    if not name.isascii():
        raise AddressRefused(f"'url' has a host that is not a valid ASCII/IDNA name: {host[:100]!r}")
    if looks_numeric(name) or ":" in name:
        raise AddressRefused(f"'url' has a host that looks like an IP address but is not one: {host[:100]!r}")
    if "." not in name or any(name == s or name.endswith("." + s) for s in PRIVATE_SUFFIXES):
        raise AddressRefused(
            f"'url' cannot be used for webhooks: {host!r} is a name that only exists inside a private "
            f"network; webhooks may only reach public addresses unless the provider allows the host "
            f"({SETTING})"
        )
    return None


# --- registration -------------------------------------------------------------------------------------
def _ascii_host(host: str) -> str:
    """A non-ASCII host IDNA-encoded as ``getaddrinfo`` would (``ⓛocalhost`` -> ``localhost``)."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise AddressRefused(f"'url' has a host that is not a valid IDNA name: {host[:100]!r}") from exc


def url_hosts(url: str) -> list[str]:
    """Every reading of the URL's host that a client might connect to, in ASCII: ``urlsplit``'s and httpx's
    (the one delivery uses), a non-ASCII one IDNA-encoded as ``getaddrinfo`` would (``ⓛocalhost``)."""
    import httpx  # here, not at import time: the ground floor stays light

    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or "\\" in parts.netloc:
        raise AddressRefused("'url' must not carry credentials or a backslash before its host")
    hosts = [_ascii_host(parts.hostname or "")]
    try:
        hosts.append(httpx.URL(url).raw_host.decode("ascii"))
    except httpx.InvalidURL as exc:
        raise AddressRefused(f"'url' is not a URL webhooks can be sent to: {exc}") from exc
    return list(dict.fromkeys(h for h in hosts if h))


def check_url(url: str, allow: Allowlist, resolve: Resolver | None = None) -> None:
    """Registration: refuse (``AddressRefused``) a URL whose host, in any reading, is not public or allowed;
    with ``resolve``, also one whose name resolves to such an address (no answer: allowed, since delivery
    checks again)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    check_name(_ascii_host(parts.hostname or ""), allow)  # the literal's own message before a parser's
    for host in url_hosts(url):
        if check_name(host, allow) is None and resolve is not None and not allow.allows_host(host):
            for address in resolve(normalize_name(host), port):
                ip = parse_ip(address)
                if ip is not None:
                    check_ip(ip, allow, host=host)


_dns_pool: ThreadPoolExecutor | None = None


def bounded(resolver: Resolver, timeout_s: float) -> Resolver:
    """``resolver`` answering within ``timeout_s`` or not at all (an empty answer): registration must not
    hang on a slow DNS server. At most 4 lookups run at once; more wait, and count against their time."""

    def resolve(host: str, port: int) -> Sequence[str]:
        global _dns_pool
        if _dns_pool is None:
            _dns_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="netguard-dns")
        future = _dns_pool.submit(resolver, host, port)
        try:
            return future.result(timeout=timeout_s)
        except (TimeoutError, OSError, UnicodeError) as exc:
            log.info("webhook host %r not resolved at registration (%s); delivery checks it", host, exc)
            return []

    return resolve


# --- delivery -----------------------------------------------------------------------------------------
def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from ``getaddrinfo`` (``OSError`` when it has none), in its preference order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_checked(host: str, port: int, allow: Allowlist, resolver: Resolver) -> list[IPAddress]:
    """Delivery: the addresses to connect to, all checked. ``AddressRefused`` when the host is refused by
    name or ANY of its addresses is; ``OSError`` when it does not resolve."""
    literal = check_name(host, allow)
    if literal is not None:
        return [literal]
    name = normalize_name(host)
    addresses: list[IPAddress] = []
    for text in resolver(name, port):
        ip = parse_ip(text)
        if ip is None:
            raise OSError(f"the resolver answered {text!r} for {name!r}, which is not an address")
        addresses.append(ip)
    if not addresses:
        raise OSError(f"{name!r} has no address")
    if not allow.allows_host(name):
        for ip in addresses:
            check_ip(ip, allow, host=name)
    return addresses


def outcome(status_code: int | None, *, refused: bool = False) -> Outcome:
    """What the delivery log shows of one attempt: the answer's status class, ``connection_failed`` when
    there was no answer, ``refused_by_policy`` when nothing was sent."""
    if refused:
        return "refused_by_policy"
    if status_code is None:
        return "connection_failed"
    classes: dict[int, Outcome] = {2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
    return classes.get(status_code // 100, "invalid_response")


def recorded_outcome(status_code: int | None, error: str | None) -> Outcome | None:
    """``outcome`` of the attempt a delivery row recorded (``last_status_code``, ``last_error``); None before
    the first attempt. A row written before the log kept only classes reads as ``connection_failed``."""
    if status_code is not None:
        return outcome(status_code)
    if error is None:
        return None
    return "refused_by_policy" if error.startswith("refused_by_policy") else "connection_failed"
