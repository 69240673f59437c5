"""Issue 23's pure pieces: Standard Webhooks signatures (the specification's own example), the SSRF
guard's address rules, the signed links' expiry and tampering, the webhook backoff, the live streams'
bounds."""

from __future__ import annotations

import asyncio

import pytest

from imagend.http.events import EventHub, TooMany
from imagend.storage.links import Links, derive_secret
from imagend.webhooks import signing, targets
from imagend.webhooks.delivery import BACKOFF_MAX_SECONDS, backoff


def test_signature_matches_the_standard_webhooks_example():
    # The example of the Standard Webhooks specification (and svix's libraries' tests).
    key = signing.secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert signing.signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    sent = signing.headers(key, "msg_1", 1700000000, body)
    assert signing.verify(key, sent, body)
    assert not signing.verify(key, sent, body + b" ")


def fixed(*addresses: str) -> targets.Resolver:
    return lambda host, port: list(addresses)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254",
                                     "::1", "fe80::1", "fd00::1", "0.0.0.0", "::ffff:127.0.0.1", "100.64.0.1",
                                     "224.0.0.1"])
def test_private_addresses_are_refused_unless_allowed(address):
    with pytest.raises(targets.Refused, match="IMAGEND_WEBHOOK_ALLOW_HOSTS"):
        targets.target("https://hooks.example.com/x", frozenset(), fixed(address))
    allowed = targets.target("https://hooks.example.com/x", frozenset({"hooks.example.com"}), fixed(address))
    assert allowed.address == address


def test_a_name_with_one_private_address_among_public_ones_is_refused():
    with pytest.raises(targets.Refused):
        targets.target("http://hooks.example.com/", frozenset(), fixed("93.184.216.34", "10.0.0.1"))


def test_the_request_goes_to_the_checked_address_with_the_name_in_host():
    where = targets.target("https://hooks.example.com:8443/in?a=1", frozenset(), fixed("93.184.216.34"))
    assert where.connect_url == "https://93.184.216.34:8443/in?a=1"
    assert (where.host, where.host_header) == ("hooks.example.com", "hooks.example.com:8443")


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "gopher://x", "http://",
                                 "http://user:pw@example.com/", "http://localhost:8080/", "http://127.0.0.1/",
                                 "http://[::1]/", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/",
                                 "http://example.com:99999/"])
def test_bad_callback_urls_are_refused_at_submit(url):
    with pytest.raises(targets.Refused):
        targets.check_literal(url, frozenset())


def test_names_pass_at_submit_and_allowed_hosts_pass_whatever_they_are():
    targets.check_literal("https://hooks.example.com/in", frozenset())
    targets.check_literal("http://127.0.0.1:9000/in", frozenset({"127.0.0.1"}))
    targets.check_literal("http://10.0.0.1/", frozenset({"*"}))


def test_signed_links_expire_and_refuse_tampering():
    now = [1_000_000.0]
    links = Links(store=None, secret=derive_secret("a-token-of-sixteen-chars"), seconds=60, clock=lambda: now[0])
    path = links.signed_path(42, "image")
    query = dict(part.split("=") for part in path.split("?")[1].split("&"))
    assert links.valid(42, "image", query["expires"], query["signature"])
    assert not links.valid(43, "image", query["expires"], query["signature"])
    assert not links.valid(42, "thumbnail", query["expires"], query["signature"])
    assert not links.valid(42, "image", str(int(query["expires"]) + 1), query["signature"])
    assert not links.valid(42, "image", query["expires"], "0" * 64)
    assert not links.valid(42, "image", "x", query["signature"])
    assert links.signed_path(42, "image") == path  # the same link for a while: a refreshed page keeps its cache
    now[0] += 60 + links.step  # valid for at least its 60 s, at most one step (15 s) more
    assert not links.valid(42, "image", query["expires"], query["signature"])
    assert links.signed_path(42, "image") != path
    unsigned = Links(store=None, secret=None, seconds=60)
    assert unsigned.signed_path(42, "image") == "/v1/images/42/image"
    assert not unsigned.valid(42, "image", query["expires"], query["signature"])


def test_backoff_doubles_with_jitter_up_to_an_hour():
    assert backoff(1, 2.0, rng=lambda: 0.5) == 2.0
    assert backoff(4, 2.0, rng=lambda: 0.5) == 16.0
    assert 0.8 * 2.0 <= backoff(1, 2.0, rng=lambda: 0.0) <= 1.2 * 2.0
    assert backoff(60, 2.0, rng=lambda: 0.5) == BACKOFF_MAX_SECONDS


def test_live_streams_are_bounded_overall_and_per_client():
    async def run() -> None:
        hub = EventHub(lambda ids: [], max_streams=3, max_per_client=2, poll_seconds=60)
        first = hub.subscribe(1, "10.0.0.1")
        hub.subscribe(1, "10.0.0.1")
        with pytest.raises(TooMany) as per_client:
            hub.subscribe(2, "10.0.0.1")
        assert per_client.value.status == 429
        hub.subscribe(2, "10.0.0.2")
        with pytest.raises(TooMany) as overall:
            hub.subscribe(3, "10.0.0.3")
        assert overall.value.status == 503 and "IMAGEND_SSE_MAX_STREAMS" in overall.value.message
        hub.unsubscribe(first)
        hub.unsubscribe(first)  # twice: counted once
        assert hub.streams == 2 and hub.per_client == {"10.0.0.1": 1, "10.0.0.2": 1}
        hub.subscribe(3, "10.0.0.3")
        for sub in list(hub.subscriptions):
            hub.unsubscribe(sub)
        await asyncio.sleep(0)  # the reader sees no stream left and ends

    asyncio.run(run())
