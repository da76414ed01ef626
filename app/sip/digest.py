"""HTTP Digest authentication for SIP (RFC 7616, RFC 8760, compatible with RFC 2617).

Client side: parse ``WWW-Authenticate`` / ``Proxy-Authenticate`` (401 / 407), build the
``Authorization`` / ``Proxy-Authorization`` value for a request.  Server side: build a
challenge, parse credentials and check them.  Algorithms: MD5, SHA-256, SHA-512-256 and
their ``-sess`` variants (RFC 7616 §3.4.2); qop ``auth`` and ``auth-int`` (RFC 7616 §3.4.3)
and the RFC 2069 style "no qop" computation (RFC 2617 §3.2.2.1).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from app.sip.errors import SipParseError

# RFC 7616 §3.4.2 / RFC 8760 §2: algorithm token -> hashlib name.  Tokens compare
# case-insensitively; the canonical spelling is kept for what we send.
_HASHES: dict[str, str] = {
    "MD5": "md5",
    "SHA-256": "sha256",
    "SHA-512-256": "sha512_256",
}
# Preference when a server offers several challenges (RFC 7616 §3.7: the client uses the
# strongest it supports; RFC 8760 §2.3 the same for SIP).
_STRENGTH = {"SHA-512-256": 3, "SHA-256": 2, "MD5": 1}


def _canonical_algorithm(token: str) -> tuple[str, bool]:
    """('SHA-256', True) for 'sha-256-SESS'; raises SipParseError for unknown algorithms."""
    upper = token.strip().upper()
    sess = upper.endswith("-SESS")
    base = upper[: -len("-SESS")] if sess else upper
    if base not in _HASHES:
        raise SipParseError(f"unsupported digest algorithm {token!r}", status_hint=400)
    return base, sess


def _hash_fn(algorithm: str) -> Callable[[bytes], str]:
    base, _ = _canonical_algorithm(algorithm)
    name = _HASHES[base]

    def digest(data: bytes) -> str:
        return hashlib.new(name, data).hexdigest()

    return digest


def algorithm_supported(algorithm: str) -> bool:
    """True when this build can compute ``algorithm`` (SHA-512-256 needs OpenSSL support)."""
    try:
        base, _ = _canonical_algorithm(algorithm)
        hashlib.new(_HASHES[base], b"")
    except (SipParseError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------
# auth-param lists (RFC 7235 §2.1 / RFC 3261 §25.1 digest-cln)


def _parse_params(text: str, start: int) -> tuple[dict[str, str], int]:
    """Parse ``name=value`` pairs (token or quoted-string) from ``text[start:]``.

    Stops before the next challenge (a bare token not followed by ``=``) and returns the
    position there.  Names are lower-cased; quoted-string escapes are undone.
    """
    params: dict[str, str] = {}
    i, n = start, len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n:
            break
        name_start = i
        while i < n and text[i] not in "= \t\r\n,":
            i += 1
        name = text[name_start:i]
        j = i
        while j < n and text[j] in " \t":
            j += 1
        if j >= n or text[j] != "=":
            # A bare token: the scheme of the next challenge (or garbage).
            return params, name_start
        i = j + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(text[i])
                i += 1
            if i >= n:
                raise SipParseError("unterminated quoted-string in auth params", status_hint=400)
            i += 1
            value = "".join(chars)
        else:
            value_start = i
            while i < n and text[i] not in ", \t":
                i += 1
            value = text[value_start:i]
        if not name:
            raise SipParseError("empty auth-param name", status_hint=400)
        params[name.lower()] = value
    return params, n


def _split_challenges(value: str) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t\r\n,":
            i += 1
        if i >= n:
            break
        scheme_start = i
        while i < n and value[i] not in " \t":
            i += 1
        scheme = value[scheme_start:i]
        params, i = _parse_params(value, i)
        out.append((scheme, params))
    return out


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------------
# challenges (client input, server output)


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestChallenge:
    """One parsed ``Digest`` challenge (RFC 7616 §3.3, RFC 3261 §22.4)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"  # canonical spelling, "-sess" kept, e.g. "SHA-256-sess"
    algorithm_given: bool = False  # the challenge named the algorithm (echo it back)
    qop: tuple[str, ...] = ()  # offered qop values, lower-case; empty = RFC 2069 style
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None
    userhash: bool = False
    charset: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # every raw param, lower-case names


def _challenge_from_params(params: dict[str, str]) -> DigestChallenge:
    if "realm" not in params or "nonce" not in params:
        raise SipParseError("digest challenge without realm or nonce", status_hint=400)
    algorithm_token = params.get("algorithm")
    if algorithm_token is None:
        algorithm = "MD5"  # RFC 7616 §3.3: absent means MD5
    else:
        base, sess = _canonical_algorithm(algorithm_token)
        algorithm = base + ("-sess" if sess else "")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return DigestChallenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=algorithm,
        algorithm_given=algorithm_token is not None,
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
        domain=params.get("domain"),
        userhash=params.get("userhash", "").lower() == "true",
        charset=params.get("charset"),
        params=params,
    )


def parse_challenges(value: str) -> list[DigestChallenge]:
    """Every Digest challenge in one ``WWW-Authenticate``/``Proxy-Authenticate`` value.

    Challenges of other schemes are skipped, Digest challenges with an algorithm we do not
    know are skipped too (RFC 7616 §3.7: the client ignores what it cannot use).  A Digest
    challenge without realm/nonce raises SipParseError.
    """
    out: list[DigestChallenge] = []
    for scheme, params in _split_challenges(value):
        if scheme.lower() != "digest":
            continue
        if "algorithm" in params and not algorithm_supported(params["algorithm"]):
            continue
        out.append(_challenge_from_params(params))
    return out


def parse_challenge(value: str) -> DigestChallenge:
    """The first usable Digest challenge in ``value``; SipParseError if there is none."""
    challenges = parse_challenges(value)
    if not challenges:
        raise SipParseError("no usable Digest challenge", status_hint=400)
    return challenges[0]


def choose_challenge(values: Iterable[str]) -> DigestChallenge | None:
    """From all challenge header values of a 401/407, the one with the strongest algorithm.

    Among equals the first one wins (RFC 7616 §3.7: servers list preferred ones first).
    Unparseable values are skipped.
    """
    best: DigestChallenge | None = None
    best_rank = 0
    for value in values:
        try:
            challenges = parse_challenges(value)
        except SipParseError:
            continue
        for challenge in challenges:
            rank = _STRENGTH[_canonical_algorithm(challenge.algorithm)[0]]
            if rank > best_rank:
                best, best_rank = challenge, rank
    return best


def challenge_header(status: int) -> str:
    """The header carrying the challenge: 401 -> WWW-Authenticate, 407 -> Proxy-Authenticate."""
    # RFC 3261 §22.2 / §22.3
    if status == 401:
        return "WWW-Authenticate"
    if status == 407:
        return "Proxy-Authenticate"
    raise ValueError(f"status {status} carries no challenge")


def credentials_header(status: int) -> str:
    """The header answering it: 401 -> Authorization, 407 -> Proxy-Authorization."""
    # RFC 3261 §22.2 / §22.3
    if status == 401:
        return "Authorization"
    if status == 407:
        return "Proxy-Authorization"
    raise ValueError(f"status {status} carries no challenge")


# ---------------------------------------------------------------------------------------
# the computation (RFC 7616 §3.4.1-§3.4.3, RFC 2617 §3.2.2)


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password): what a server may store instead of the password."""
    h = _hash_fn(algorithm)
    return h(f"{username}:{realm}:{password}".encode())


def compute_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    password: str | None = None,
    ha1: str | None = None,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value (request-digest) for the given inputs.

    ``ha1`` (from ``compute_ha1``) may replace ``password``.  With ``qop`` None this is the
    RFC 2069 computation RFC 2617 keeps for compatibility.
    """
    h = _hash_fn(algorithm)
    _, sess = _canonical_algorithm(algorithm)
    if ha1 is None:
        if password is None:
            raise ValueError("need password or ha1")
        ha1 = compute_ha1(algorithm, username, realm, password)
    if sess:
        # RFC 7616 §3.4.2: -sess mixes the nonce and cnonce into A1.
        if cnonce is None:
            raise ValueError("-sess algorithms need a cnonce")
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode())
    if qop == "auth-int":
        # RFC 7616 §3.4.3: A2 = method:uri:H(entity-body)
        ha2 = h(f"{method}:{uri}:{h(body)}".encode())
    else:
        ha2 = h(f"{method}:{uri}".encode())
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}".encode())
    if nc is None or cnonce is None:
        raise ValueError("qop needs nc and cnonce")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


def new_cnonce() -> str:
    """A fresh client nonce (RFC 7616 §3.4: unguessable, opaque to the server)."""
    return secrets.token_hex(16)


def _pick_qop(offered: tuple[str, ...]) -> str | None:
    # qop=auth is enough for SIP (the body is not protected); use auth-int only when it is
    # the only thing offered.  Nothing offered: the RFC 2069 compatible computation.
    if not offered:
        return None
    if "auth" in offered:
        return "auth"
    if "auth-int" in offered:
        return "auth-int"
    raise SipParseError(f"no supported qop in {offered!r}", status_hint=400)


def build_authorization(
    challenge: DigestChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    body: bytes = b"",
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The ``Authorization`` / ``Proxy-Authorization`` value answering ``challenge``.

    ``uri`` is the Request-URI of the request being authorised (RFC 3261 §22.4: the digest
    ``uri`` parameter equals it).
    """
    qop = _pick_qop(challenge.qop)
    sess = _canonical_algorithm(challenge.algorithm)[1]
    if cnonce is None and (qop is not None or sess):
        cnonce = new_cnonce()
    nc_text = f"{nc:08x}" if qop is not None else None
    name = username
    if challenge.userhash:
        # RFC 7616 §3.4.4: send H(username:realm) instead of the user name.
        name = _hash_fn(challenge.algorithm)(f"{username}:{challenge.realm}".encode())
    response = compute_response(
        algorithm=challenge.algorithm,
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        password=password,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
        body=body,
    )
    parts = [
        f"username={_quote(name)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
    ]
    if challenge.algorithm_given or challenge.algorithm != "MD5":
        parts.append(f"algorithm={challenge.algorithm}")
    if cnonce is not None:
        parts.append(f"cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    if qop is not None:
        # RFC 7616 §3.4: qop and nc are sent unquoted.
        parts.append(f"qop={qop}")
        parts.append(f"nc={nc_text}")
    if challenge.userhash:
        parts.append("userhash=true")
    return "Digest " + ", ".join(parts)


class DigestClient:
    """Credentials of one user plus the nonce counts already used (RFC 7616 §3.4: nc)."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self._nonce_counts: dict[tuple[str, str], int] = {}

    def authorize(
        self, challenge: DigestChallenge, *, method: str, uri: str, body: bytes = b""
    ) -> str:
        """Credentials for one request; the nonce count goes up for each reuse of a nonce."""
        key = (challenge.realm, challenge.nonce)
        nc = self._nonce_counts.get(key, 0) + 1
        self._nonce_counts[key] = nc
        return build_authorization(
            challenge,
            username=self.username,
            password=self.password,
            method=method,
            uri=uri,
            body=body,
            nc=nc,
        )


# ---------------------------------------------------------------------------------------
# server side


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestCredentials:
    """One parsed ``Authorization`` / ``Proxy-Authorization`` Digest value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    userhash: bool = False
    params: dict[str, str] = field(default_factory=dict)


def parse_credentials(value: str) -> DigestCredentials:
    """Parse a Digest ``Authorization`` value; SipParseError when it is not one."""
    for scheme, params in _split_challenges(value):
        if scheme.lower() != "digest":
            continue
        missing = [p for p in ("username", "realm", "nonce", "uri", "response") if p not in params]
        if missing:
            raise SipParseError(f"digest credentials lack {', '.join(missing)}", status_hint=400)
        base, sess = _canonical_algorithm(params.get("algorithm", "MD5"))
        qop = params.get("qop")
        if qop is not None and ("nc" not in params or "cnonce" not in params):
            raise SipParseError("digest qop without nc/cnonce", status_hint=400)
        return DigestCredentials(
            username=params["username"],
            realm=params["realm"],
            nonce=params["nonce"],
            uri=params["uri"],
            response=params["response"].lower(),
            algorithm=base + ("-sess" if sess else ""),
            qop=qop.lower() if qop is not None else None,
            nc=params.get("nc"),
            cnonce=params.get("cnonce"),
            opaque=params.get("opaque"),
            userhash=params.get("userhash", "").lower() == "true",
            params=params,
        )
    raise SipParseError("no Digest credentials", status_hint=400)


def new_nonce() -> str:
    """A fresh server nonce (RFC 7616 §3.3: unique per challenge, opaque to clients)."""
    return secrets.token_urlsafe(24)


def build_challenge(
    *,
    realm: str,
    nonce: str | None = None,
    algorithm: str = "MD5",
    qop: tuple[str, ...] = ("auth",),
    opaque: str | None = None,
    stale: bool = False,
) -> str:
    """A ``WWW-Authenticate`` / ``Proxy-Authenticate`` value (RFC 7616 §3.3)."""
    base, sess = _canonical_algorithm(algorithm)
    parts = [
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce if nonce is not None else new_nonce())}",
        f"algorithm={base}{'-sess' if sess else ''}",
    ]
    if qop:
        parts.append(f"qop={_quote(','.join(qop))}")
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    if stale:
        parts.append("stale=true")
    return "Digest " + ", ".join(parts)


def verify_credentials(
    credentials: DigestCredentials,
    *,
    method: str,
    password: str | None = None,
    ha1: str | None = None,
    body: bytes = b"",
) -> bool:
    """True when ``credentials.response`` is right for this request and secret.

    The caller still checks realm, nonce freshness, nc replay and that ``credentials.uri``
    names the Request-URI (RFC 3261 §22.4); this only does the arithmetic, in constant time.
    ``ha1`` must have been computed with the plain (non -sess) user name.
    """
    if credentials.userhash:
        raise ValueError("userhash credentials: resolve the user first, then pass ha1")
    try:
        expected = compute_response(
            algorithm=credentials.algorithm,
            username=credentials.username,
            realm=credentials.realm,
            nonce=credentials.nonce,
            method=method,
            uri=credentials.uri,
            password=password,
            ha1=ha1,
            qop=credentials.qop,
            nc=credentials.nc,
            cnonce=credentials.cnonce,
            body=body,
        )
    except ValueError:
        return False
    return hmac.compare_digest(expected, credentials.response)
