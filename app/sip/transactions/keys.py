"""Transaction identifiers and the matching rules (RFC 3261 §17.1.3, §17.2.3, §9.2)."""

from __future__ import annotations

from dataclasses import dataclass

from app.sip.ids import is_rfc3261_branch
from app.sip.message import Request, Response


@dataclass(frozen=True, slots=True)
class ClientTransactionId:
    """A client transaction: the branch we put in the top Via plus the CSeq method.

    RFC 3261 §17.1.3: a response matches when its top Via branch and CSeq method equal
    these (a CANCEL shares its INVITE's branch, the method tells them apart).
    """

    branch: str
    method: str


@dataclass(frozen=True, slots=True)
class ServerTransactionId:
    """A server transaction: top Via branch, sent-by, and the method that created it.

    RFC 3261 §17.2.3: ACK matches the INVITE transaction, so ``method`` is never "ACK".
    For RFC 2543 peers (no magic cookie) ``branch`` is a stand-in built from the fields
    of the RFC 2543 rule, prefixed ``rfc2543:``.
    """

    branch: str
    sent_by: str
    method: str


TransactionId = ClientTransactionId | ServerTransactionId


def client_id_of_response(response: Response) -> ClientTransactionId | None:
    """The client transaction a response belongs to (RFC 3261 §17.1.3), None without branch."""
    branch = response.top_via.branch
    if not branch:
        return None
    return ClientTransactionId(branch=branch, method=response.cseq.method)


def _sent_by(request: Request) -> str:
    via = request.top_via
    host = via.host.lower()
    return host if via.port is None else f"{host}:{via.port}"


def server_id(request: Request, *, method: str | None = None) -> ServerTransactionId | None:
    """The RFC 3261 server transaction id of ``request`` (RFC 3261 §17.2.3).

    ``method`` overrides the request's method (CANCEL looks for its INVITE).  ACK maps to
    INVITE.  None when the top Via has no RFC 3261 branch: use ``legacy_key`` then.
    """
    branch = request.top_via.branch
    if not is_rfc3261_branch(branch):
        return None
    assert branch is not None
    wanted = method or request.method
    if wanted == "ACK":
        wanted = "INVITE"
    return ServerTransactionId(branch=branch, sent_by=_sent_by(request), method=wanted)


def legacy_key(request: Request) -> tuple[str, str, str, str, int, str]:
    """Fields of the RFC 2543 matching rule, without the To tag and the method.

    RFC 3261 §17.2.3: Request-URI, From tag, Call-ID, CSeq number and top Via; the To tag
    is compared separately (INVITE's own for a retransmission or CANCEL, the response's
    for an ACK).  The first element is a discriminator for the id's branch stand-in.
    """
    return (
        "rfc2543",
        request.uri.strip(),
        request.from_.tag or "",
        request.call_id,
        request.cseq.seq,
        str(request.top_via),
    )


def legacy_server_id(request: Request, *, method: str | None = None) -> ServerTransactionId:
    """A ServerTransactionId for an RFC 2543 request (no magic cookie in its branch)."""
    wanted = method or request.method
    if wanted == "ACK":
        wanted = "INVITE"
    key = legacy_key(request)
    stand_in = "rfc2543:" + "|".join(str(part) for part in key[1:])
    return ServerTransactionId(branch=stand_in, sent_by=_sent_by(request), method=wanted)
