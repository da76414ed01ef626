"""Digest authentication (RFC 7616, RFC 8760, RFC 2617) against the RFC example figures."""

from __future__ import annotations

import hashlib

import pytest

from app.sip.digest import (
    DigestClient,
    algorithm_supported,
    build_authorization,
    build_challenge,
    challenge_header,
    choose_challenge,
    compute_ha1,
    compute_response,
    credentials_header,
    parse_challenge,
    parse_challenges,
    parse_credentials,
    verify_credentials,
)
from app.sip.errors import SipParseError

# RFC 2617 §3.5 example figures.
R2617 = {
    "username": "Mufasa",
    "password": "Circle Of Life",
    "realm": "testrealm@host.com",
    "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
    "opaque": "5ccc069c403ebaf9f0171e9517f40e41",
    "uri": "/dir/index.html",
    "cnonce": "0a4f113b",
    "method": "GET",
    "response": "6629fae49393a05397450978507c4ef1",
}

# RFC 7616 §3.9.1 example figures.
R7616 = {
    "username": "Mufasa",
    "password": "Circle of Life",
    "realm": "http-auth@example.org",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    "uri": "/dir/index.html",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "method": "GET",
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def _challenge_text(v: dict[str, str], algorithm: str | None, qop: str = "auth,auth-int") -> str:
    alg = f", algorithm={algorithm}" if algorithm else ""
    return (
        f'Digest realm="{v["realm"]}", qop="{qop}"{alg}, '
        f'nonce="{v["nonce"]}", opaque="{v["opaque"]}"'
    )


def _fields(header: str) -> dict[str, str]:
    creds = parse_credentials(header)
    return dict(creds.params)


def test_rfc2617_example_response() -> None:
    v = R2617
    got = compute_response(
        algorithm="MD5",
        username=v["username"],
        realm=v["realm"],
        password=v["password"],
        nonce=v["nonce"],
        method=v["method"],
        uri=v["uri"],
        qop="auth",
        nc="00000001",
        cnonce=v["cnonce"],
    )
    assert got == v["response"]


def test_rfc2617_example_through_challenge_and_authorization() -> None:
    v = R2617
    challenge = parse_challenge(_challenge_text(v, None))
    assert challenge.algorithm == "MD5" and not challenge.algorithm_given
    assert challenge.qop == ("auth", "auth-int")
    header = build_authorization(
        challenge,
        username=v["username"],
        password=v["password"],
        method=v["method"],
        uri=v["uri"],
        nc=1,
        cnonce=v["cnonce"],
    )
    fields = _fields(header)
    assert fields["response"] == v["response"]
    assert fields["qop"] == "auth" and fields["nc"] == "00000001"
    assert fields["opaque"] == v["opaque"]
    assert "algorithm" not in fields  # RFC 2617 peers: echo only what was given
    assert "qop=auth," in header and "nc=00000001" in header  # unquoted (RFC 7616 §3.4)


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_example(algorithm: str) -> None:
    v = R7616
    challenge = parse_challenge(_challenge_text(v, algorithm))
    header = build_authorization(
        challenge,
        username=v["username"],
        password=v["password"],
        method=v["method"],
        uri=v["uri"],
        nc=1,
        cnonce=v["cnonce"],
    )
    fields = _fields(header)
    assert fields["response"] == v[algorithm]
    assert fields["algorithm"] == algorithm
    assert fields["username"] == v["username"]
    assert fields["realm"] == v["realm"]
    assert fields["uri"] == v["uri"]
    assert fields["cnonce"] == v["cnonce"]


def test_server_verifies_rfc7616_example() -> None:
    v = R7616
    header = (
        f'Digest username="{v["username"]}", realm="{v["realm"]}", uri="{v["uri"]}", '
        f'algorithm=SHA-256, nonce="{v["nonce"]}", nc=00000001, cnonce="{v["cnonce"]}", '
        f'qop=auth, response="{v["SHA-256"]}", opaque="{v["opaque"]}"'
    )
    creds = parse_credentials(header)
    assert creds.algorithm == "SHA-256" and creds.qop == "auth" and creds.nc == "00000001"
    assert verify_credentials(creds, method="GET", password=v["password"])
    assert not verify_credentials(creds, method="GET", password="Circle Of Life")
    assert not verify_credentials(creds, method="POST", password=v["password"])
    ha1 = compute_ha1("SHA-256", v["username"], v["realm"], v["password"])
    assert verify_credentials(creds, method="GET", ha1=ha1)


def _h(data: str, name: str = "md5") -> str:
    return hashlib.new(name, data.encode()).hexdigest()


def test_no_qop_is_the_rfc2069_computation() -> None:
    challenge = parse_challenge('Digest realm="sip.example", nonce="abc"')
    header = build_authorization(
        challenge, username="bob", password="pw", method="INVITE", uri="sip:b@example.com"
    )
    fields = _fields(header)
    ha1 = _h("bob:sip.example:pw")
    ha2 = _h("INVITE:sip:b@example.com")
    assert fields["response"] == _h(f"{ha1}:abc:{ha2}")
    assert "qop" not in fields and "nc" not in fields and "cnonce" not in fields
    assert verify_credentials(parse_credentials(header), method="INVITE", password="pw")


def test_sess_variant_mixes_nonce_and_cnonce() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth", algorithm=SHA-256-sess')
    assert challenge.algorithm == "SHA-256-sess"
    header = build_authorization(
        challenge, username="u", password="p", method="BYE", uri="sip:x@y", cnonce="cn"
    )
    fields = _fields(header)
    ha1 = _h(f"{_h('u:r:p', 'sha256')}:n:cn", "sha256")
    ha2 = _h("BYE:sip:x@y", "sha256")
    assert fields["response"] == _h(f"{ha1}:n:00000001:cn:auth:{ha2}", "sha256")
    assert fields["algorithm"] == "SHA-256-sess"
    assert verify_credentials(parse_credentials(header), method="BYE", password="p")


def test_auth_int_covers_the_body() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth-int"')
    a = build_authorization(
        challenge,
        username="u",
        password="p",
        method="INVITE",
        uri="sip:x@y",
        body=b"v=0\r\n",
        cnonce="c",
    )
    b = build_authorization(
        challenge,
        username="u",
        password="p",
        method="INVITE",
        uri="sip:x@y",
        body=b"v=1\r\n",
        cnonce="c",
    )
    assert _fields(a)["qop"] == "auth-int"
    assert _fields(a)["response"] != _fields(b)["response"]
    assert verify_credentials(parse_credentials(a), method="INVITE", password="p", body=b"v=0\r\n")
    assert not verify_credentials(
        parse_credentials(a), method="INVITE", password="p", body=b"v=1\r\n"
    )


def test_auth_preferred_over_auth_int() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth-int, auth"')
    header = build_authorization(challenge, username="u", password="p", method="X", uri="sip:y")
    assert _fields(header)["qop"] == "auth"


def test_client_counts_nonce_uses() -> None:
    client = DigestClient("u", "p")
    first = parse_challenge('Digest realm="r", nonce="n1", qop="auth"')
    second = parse_challenge('Digest realm="r", nonce="n2", qop="auth"')
    ncs = [
        _fields(client.authorize(first, method="REGISTER", uri="sip:r"))["nc"],
        _fields(client.authorize(first, method="REGISTER", uri="sip:r"))["nc"],
        _fields(client.authorize(second, method="REGISTER", uri="sip:r"))["nc"],
    ]
    assert ncs == ["00000001", "00000002", "00000001"]
    h = client.authorize(first, method="INVITE", uri="sip:r")
    assert verify_credentials(parse_credentials(h), method="INVITE", password="p")
    assert not verify_credentials(parse_credentials(h), method="INVITE", password="q")


def test_challenge_parsing_details() -> None:
    c = parse_challenge(
        'Digest realm="a \\"quoted\\" realm", nonce="n,1", opaque="o", stale=TRUE, '
        'algorithm=md5, domain="sip:a sip:b", qop="auth"'
    )
    assert c.realm == 'a "quoted" realm'
    assert c.nonce == "n,1"
    assert c.stale is True
    assert c.algorithm == "MD5" and c.algorithm_given
    assert c.domain == "sip:a sip:b"
    assert parse_challenge('Digest realm="r", nonce="n", stale=false').stale is False


def test_several_challenges_in_one_value_and_other_schemes() -> None:
    value = (
        'Basic realm="x", Digest realm="r", nonce="n1", algorithm=MD5, '
        'Digest realm="r", nonce="n2", algorithm=SHA-256'
    )
    got = parse_challenges(value)
    assert [(c.nonce, c.algorithm) for c in got] == [("n1", "MD5"), ("n2", "SHA-256")]


def test_choose_strongest_and_skip_unknown() -> None:
    values = [
        'Digest realm="r", nonce="m", algorithm=MD5',
        'Digest realm="r", nonce="u", algorithm=UNKNOWN-HASH',
        'Digest realm="r", nonce="s", algorithm=SHA-256',
        "garbage without params",
    ]
    best = choose_challenge(values)
    assert best is not None and best.nonce == "s"
    assert choose_challenge(['Digest realm="r", nonce="u", algorithm=FOO']) is None
    if algorithm_supported("SHA-512-256"):
        best = choose_challenge([*values, 'Digest realm="r", nonce="x", algorithm=SHA-512-256'])
        assert best is not None and best.algorithm == "SHA-512-256"


@pytest.mark.parametrize(
    "value",
    ['Digest nonce="n"', 'Digest realm="r"', 'Digest realm="r, nonce="n', "Basic realm=x"],
)
def test_bad_challenges(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_challenge(value)


def test_bad_credentials() -> None:
    with pytest.raises(SipParseError, match="lack"):
        parse_credentials('Digest username="u", realm="r"')
    with pytest.raises(SipParseError, match="nc/cnonce"):
        parse_credentials(
            'Digest username="u", realm="r", nonce="n", uri="sip:x", response="0", qop=auth'
        )
    with pytest.raises(SipParseError, match="no Digest"):
        parse_credentials("Basic dXNlcjpwdw==")


def test_userhash() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth", userhash=true')
    header = build_authorization(challenge, username="bob", password="p", method="M", uri="u")
    fields = _fields(header)
    assert fields["username"] == _h("bob:r")
    assert fields["userhash"] == "true"
    with pytest.raises(ValueError, match="userhash"):
        verify_credentials(parse_credentials(header), method="M", password="p")


def test_server_challenge_round_trip() -> None:
    value = build_challenge(
        realm="callctl", nonce="nn", algorithm="SHA-256", qop=("auth",), opaque="op", stale=True
    )
    c = parse_challenge(value)
    assert (c.realm, c.nonce, c.algorithm, c.qop, c.opaque, c.stale) == (
        "callctl",
        "nn",
        "SHA-256",
        ("auth",),
        "op",
        True,
    )
    assert parse_challenge(build_challenge(realm="r")).nonce  # a fresh nonce is made


def test_header_names() -> None:
    assert challenge_header(401) == "WWW-Authenticate"
    assert challenge_header(407) == "Proxy-Authenticate"
    assert credentials_header(401) == "Authorization"
    assert credentials_header(407) == "Proxy-Authorization"
    with pytest.raises(ValueError, match="no challenge"):
        credentials_header(403)
