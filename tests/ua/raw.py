"""Helpers for a raw side of the link: SDP texts and hand-made requests and responses."""

from __future__ import annotations

from app.sip.dialog import Dialog
from app.sip.events import AckReceived, RequestReceived
from app.sip.headers import CSeq
from app.sip.ids import new_call_id, new_tag
from app.sip.message import Headers, Request, Response, make_response
from tests.ua.link import ADDRS, Link

SDP = "application/sdp"


def sdp(
    port: int,
    *,
    codecs: str = "pcmu",
    direction: str = "sendrecv",
    address: str = "127.0.0.1",
    session: int = 4242,
) -> str:
    """A one-stream audio SDP (offer or answer). ``codecs``: "pcmu" or "g729" (no common
    codec with callctl)."""
    if codecs == "pcmu":
        m = f"m=audio {port} RTP/AVP 0 101"
        attrs = ["a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15"]
    else:
        m = f"m=audio {port} RTP/AVP 18"
        attrs = ["a=rtpmap:18 G729/8000"]
    lines = [
        "v=0",
        f"o=- {session} 1 IN IP4 {address}",
        "s=-",
        f"c=IN IP4 {address}",
        "t=0 0",
        m,
        *attrs,
        f"a={direction}",
    ]
    return "\r\n".join(lines) + "\r\n"


def reply(
    req: Request,
    status: int,
    *,
    tag: str | None = None,
    body: str | None = None,
    side: str = "b",
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """A response of the raw side to ``req`` (Contact for 101-299)."""
    resp = make_response(req, status, to_tag=tag)
    if 101 <= status < 300:
        host, port = ADDRS[side]
        resp.headers.add("Contact", f"<sip:raw@{host}:{port};transport=udp>")
    for name, value in headers or []:
        resp.headers.add(name, value)
    if body is not None:
        resp.headers.add("Content-Type", SDP)
        resp.body = body.encode()
    return resp


class RawUac:
    """Side "a" without UA: sends an INVITE to the UA on side "b" and plays the caller."""

    def __init__(self, link: Link, *, extra: list[tuple[str, str]] | None = None) -> None:
        self.link = link
        self.call_id = new_call_id("raw")
        self.tag = new_tag()
        self.invite: Request | None = None
        self.dialog: Dialog | None = None
        self.extra = extra or []

    def make_invite(self, body: str | None = None, cseq: int = 1) -> Request:
        host, port = ADDRS["a"]
        bhost, bport = ADDRS["b"]
        h = Headers()
        h.add("From", f"<sip:raw@{host}:{port}>;tag={self.tag}")
        h.add("To", f"<sip:bob@{bhost}:{bport}>")
        h.add("Call-ID", self.call_id)
        h.add("CSeq", str(CSeq(cseq, "INVITE")))
        h.add("Contact", f"<sip:raw@{host}:{port};transport=udp>")
        for name, value in self.extra:
            h.add(name, value)
        req = Request(method="INVITE", uri=f"sip:bob@{bhost}:{bport}", headers=h)
        if body is not None:
            h.add("Content-Type", SDP)
            req.body = body.encode()
        return req

    def send_invite(self, body: str | None = None) -> Request:
        self.invite = self.make_invite(body)
        self.link.core("a").send_request(self.invite)
        return self.invite

    def responses(self, status: int | None = None) -> list[Response]:
        return [
            w.message
            for w in self.link.delivered("b")
            if isinstance(w.message, Response)
            and w.message.call_id == self.call_id
            and (status is None or w.message.status == status)
        ]

    def confirm(self, resp: Response) -> Dialog:
        """The UAC dialog from the 2xx ``resp``."""
        assert self.invite is not None
        self.dialog = Dialog.create_uac(self.invite, resp)
        self.link.endpoint("a").dialogs.register(self.dialog)
        return self.dialog

    def ack(self, resp: Response, body: str | None = None) -> Request:
        dialog = self.dialog or self.confirm(resp)
        ack = dialog.create_ack(
            resp.cseq.seq,
            body=body.encode() if body else b"",
            content_type=SDP if body else None,
        )
        self.link.core("a").send_stateless(ack, ADDRS["b"], "udp")
        return ack

    def send_in_dialog(
        self, method: str, body: str | None = None, content_type: str = SDP
    ) -> Request:
        assert self.dialog is not None
        req = self.dialog.create_request(
            method,
            body=body.encode() if body else b"",
            content_type=content_type if body else None,
        )
        self.link.core("a").send_request(req)
        return req

    def requests(self, method: str) -> list[RequestReceived]:
        return [
            e
            for e in self.link.events["a"]
            if isinstance(e, RequestReceived) and e.request.method == method
        ]

    def acks(self) -> list[AckReceived]:
        return [e for e in self.link.events["a"] if isinstance(e, AckReceived)]
