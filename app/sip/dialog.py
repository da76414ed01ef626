"""Dialogs (RFC 3261 §12): creation on both sides, state, in-dialog requests, ACK, CANCEL.

A ``Dialog`` is plain data plus the §12 rules; it sends nothing.  The TU creates it from
the request and the response that establish it, keeps it up to date with
``receive_response`` / ``response_sent`` and registers it in the endpoint's
``DialogRegistry`` so in-dialog requests find it (and unknown ones get 481).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from app.sip.errors import LocalProtocolError, RemoteProtocolError
from app.sip.headers import CSeq, NameAddr
from app.sip.ids import random_below
from app.sip.message import Headers, Request, Response
from app.sip.uri import SipUri, Uri

__all__ = [
    "TARGET_REFRESH_METHODS",
    "Dialog",
    "DialogId",
    "DialogRegistry",
    "DialogRole",
    "DialogState",
    "build_cancel",
]

# Requests whose Contact replaces the remote target (RFC 3261 §12.2: re-INVITE;
# RFC 3311 §5.1 UPDATE; RFC 6665 §4.1 SUBSCRIBE/NOTIFY).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY"})
# Requests we put our Contact into (target refresh requests and REFER, RFC 3515 §2.4.1).
_CONTACT_METHODS = TARGET_REFRESH_METHODS | {"REFER"}
# RFC 3261 §8.1.1.6
_MAX_FORWARDS = "70"
# RFC 3261 §8.1.1.5: the initial CSeq number is below 2**31.
_CSEQ_LIMIT = 2**31
# RFC 3261 §19.1.1 Table 1: not allowed in a Request-URI (plus URI headers).
_NOT_IN_RURI = frozenset({"method"})


class DialogState(StrEnum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogRole(StrEnum):
    UAC = "uac"
    UAS = "uas"


# RFC 3261 §12: early -> confirmed -> terminated; an early dialog may also just end
# (non-2xx final response, CANCEL).  Anything else is a caller's mistake.
TRANSITIONS: dict[DialogState, frozenset[DialogState]] = {
    DialogState.EARLY: frozenset(
        {DialogState.EARLY, DialogState.CONFIRMED, DialogState.TERMINATED}
    ),
    DialogState.CONFIRMED: frozenset({DialogState.CONFIRMED, DialogState.TERMINATED}),
    DialogState.TERMINATED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class DialogId:
    """RFC 3261 §12: Call-ID, local tag, remote tag."""

    call_id: str
    local_tag: str
    remote_tag: str


def _first_contact_uri(message: Request | Response) -> Uri | None:
    contacts = message.contacts
    return contacts[0].uri if contacts else None


def _first_contact_value(message: Request | Response) -> str | None:
    values = message.headers.get_list("Contact")
    return values[0] if values else None


def _with_tag(addr: NameAddr, tag: str) -> NameAddr:
    out = addr.copy()
    out.tag = tag
    return out


class Dialog:
    """One dialog (RFC 3261 §12.1).  Use ``create_uac`` / ``create_uas``."""

    def __init__(
        self,
        *,
        role: DialogRole,
        state: DialogState,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_uri: NameAddr,
        remote_uri: NameAddr,
        remote_target: Uri,
        route_set: list[NameAddr],
        local_seq: int | None,
        remote_seq: int | None,
        secure: bool,
        local_contact: str | None,
        invite_seq: int | None,
    ) -> None:
        self.role = role
        self.state = state
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        # From/To values without tags; the tags live in local_tag/remote_tag.
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.secure = secure
        self.local_contact = local_contact
        # CSeq number of the last INVITE we sent in this dialog (the ACK reuses it).
        self.invite_seq = invite_seq

    def __repr__(self) -> str:
        return (
            f"<Dialog {self.role} {self.state} call_id={self.call_id!r} "
            f"local={self.local_tag!r} remote={self.remote_tag!r}>"
        )

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def create_uac(cls, request: Request, response: Response) -> Dialog:
        """The UAC's dialog from a 101-199 with a To tag (early) or a 2xx (RFC 3261 §12.1.2)."""
        if not 101 <= response.status <= 299:
            raise LocalProtocolError(f"a {response.status} does not create a dialog")
        remote_tag = response.to.tag
        local_tag = request.from_.tag
        if not remote_tag or not local_tag:
            raise LocalProtocolError("dialog needs a From tag and a To tag in the response")
        # §12.1.2: route set = Record-Route of the response, reversed.
        route_set = [r.copy() for r in reversed(response.record_routes)]
        # §12.1.2: remote target = Contact of the response (the Request-URI as fallback for a
        # provisional without Contact, which §12.1.1 forbids but peers send).
        target = _first_contact_uri(response) or request.parsed_uri()
        ruri = request.parsed_uri()
        local_uri = request.from_.copy()
        local_uri.tag = None
        remote_uri = request.to.copy()
        remote_uri.tag = None
        return cls(
            role=DialogRole.UAC,
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=local_uri,
            remote_uri=remote_uri,
            remote_target=target,
            route_set=route_set,
            local_seq=request.cseq.seq,
            remote_seq=None,  # §12.1.2: empty
            secure=isinstance(ruri, SipUri) and ruri.secure,
            local_contact=_first_contact_value(request),
            invite_seq=request.cseq.seq if request.method == "INVITE" else None,
        )

    @classmethod
    def create_uas(cls, request: Request, response: Response) -> Dialog:
        """The UAS's dialog from the 101-299 it sends with its To tag (RFC 3261 §12.1.1)."""
        if not 101 <= response.status <= 299:
            raise LocalProtocolError(f"a {response.status} does not create a dialog")
        local_tag = response.to.tag
        remote_tag = request.from_.tag
        if not local_tag:
            raise LocalProtocolError("the response needs our To tag")
        if not remote_tag:
            # RFC 3261 §12.2.2 / RFC 2543 peers without From tag: treat the tag as empty.
            remote_tag = ""
        # §12.1.1: route set = Record-Route of the request, in order.
        route_set = [r.copy() for r in request.record_routes]
        target = _first_contact_uri(request)
        if target is None:
            raise RemoteProtocolError("dialog-creating request without Contact", 400)
        ruri = request.parsed_uri()
        local_uri = request.to.copy()
        local_uri.tag = None
        remote_uri = request.from_.copy()
        remote_uri.tag = None
        return cls(
            role=DialogRole.UAS,
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=local_uri,
            remote_uri=remote_uri,
            remote_target=target,
            route_set=route_set,
            local_seq=None,  # §12.1.1: empty
            remote_seq=request.cseq.seq,
            secure=isinstance(ruri, SipUri) and ruri.secure,
            local_contact=_first_contact_value(response),
            invite_seq=None,
        )

    # -- state ----------------------------------------------------------------------------

    def _move(self, state: DialogState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise LocalProtocolError(f"dialog cannot go from {self.state} to {state}")
        self.state = state

    def terminate(self) -> None:
        """End the dialog (after BYE, a final non-2xx to the initial INVITE, 481/408, ...)."""
        if self.state is not DialogState.TERMINATED:
            self._move(DialogState.TERMINATED)

    @property
    def terminated(self) -> bool:
        return self.state is DialogState.TERMINATED

    def _is_initial_invite(self, cseq: CSeq) -> bool:
        return cseq.method == "INVITE" and self.state is DialogState.EARLY

    def receive_response(self, response: Response) -> None:
        """Update from a response to a request we sent in this dialog (UAC side of it).

        RFC 3261 §12.1.2 / §13.2.2.4: a 2xx to the INVITE that made an early dialog
        confirms it (route set taken again from its Record-Route); a 300-699 ends it.
        §12.2.1.2: a 2xx (or, for the early dialog, a 1xx) to a target refresh request
        replaces the remote target by its Contact; 481 or 408 end the dialog.
        """
        if self.terminated:
            raise LocalProtocolError("dialog is terminated")
        tag = response.to.tag
        if tag != self.remote_tag:
            if tag is None and response.status < 200:
                return  # e.g. a 100 Trying: no dialog information in it
            raise LocalProtocolError(f"response with To tag {tag!r} belongs to another dialog")
        cseq = response.cseq
        status = response.status
        if self._is_initial_invite(cseq):
            if status >= 300:
                self._move(DialogState.TERMINATED)
                return
            if status >= 200:
                self._move(DialogState.CONFIRMED)
                if self.role is DialogRole.UAC:
                    self.route_set = [r.copy() for r in reversed(response.record_routes)]
            if status > 100:
                target = _first_contact_uri(response)
                if target is not None:
                    self.remote_target = target
            return
        if status in (408, 481):
            # §12.2.1.2
            self._move(DialogState.TERMINATED)
            return
        if 200 <= status < 300 and cseq.method in TARGET_REFRESH_METHODS:
            target = _first_contact_uri(response)
            if target is not None:
                self.remote_target = target

    def response_sent(self, response: Response) -> None:
        """Update from a response we send to the INVITE that created this UAS dialog.

        A 2xx confirms the early dialog, a 300-699 ends it (RFC 3261 §12.1.1, §13.3.1.4).
        Responses to other requests leave the state alone.
        """
        if self.terminated:
            raise LocalProtocolError("dialog is terminated")
        if not self._is_initial_invite(response.cseq):
            return
        if 200 <= response.status < 300:
            self._move(DialogState.CONFIRMED)
            contact = _first_contact_value(response)
            if contact is not None:
                self.local_contact = contact
        elif response.status >= 300:
            self._move(DialogState.TERMINATED)

    def receive_request(self, request: Request) -> None:
        """Apply RFC 3261 §12.2.2 to a request received in this dialog.

        Raises RemoteProtocolError(status_hint=500) when its CSeq is lower than the remote
        sequence number (out of order).  ACK and CANCEL carry the CSeq of their INVITE and
        are not checked.  A target refresh request's Contact replaces the remote target.
        """
        if self.terminated:
            raise RemoteProtocolError("dialog is terminated", 481)
        if request.method in ("ACK", "CANCEL"):
            return
        seq = request.cseq.seq
        if self.remote_seq is not None and seq < self.remote_seq:
            raise RemoteProtocolError(
                f"CSeq {seq} lower than the dialog's remote sequence {self.remote_seq}", 500
            )
        self.remote_seq = seq
        if request.method in TARGET_REFRESH_METHODS:
            target = _first_contact_uri(request)
            if target is not None:
                self.remote_target = target

    # -- building requests ----------------------------------------------------------------

    def next_cseq(self) -> int:
        """Take the next local CSeq number (RFC 3261 §12.2.1.1)."""
        if self.local_seq is None:
            # §12.2.1.1 / §8.1.1.5: an empty local sequence starts at a random value.
            self.local_seq = 1 + random_below(_CSEQ_LIMIT // 2)
        else:
            self.local_seq += 1
        return self.local_seq

    def _route(self) -> tuple[str, list[str]]:
        """Request-URI and Route values for the next request (RFC 3261 §12.2.1.1)."""
        if not self.route_set:
            return str(self.remote_target), []
        first = self.route_set[0].uri
        if isinstance(first, SipUri) and first.lr:
            # Loose routing: Request-URI is the remote target, Route the whole set.
            return str(self.remote_target), [str(r) for r in self.route_set]
        # Strict routing: Request-URI is the first route (without the parameters a
        # Request-URI may not carry), Route is the rest plus the remote target.
        ruri = first.copy()
        if isinstance(ruri, SipUri):
            ruri.headers = {}
            ruri.params = {k: v for k, v in ruri.params.items() if k not in _NOT_IN_RURI}
        routes = [str(r) for r in self.route_set[1:]]
        routes.append(f"<{self.remote_target}>")
        return str(ruri), routes

    def _build(
        self,
        method: str,
        cseq: int,
        *,
        body: bytes,
        content_type: str | None,
        headers: Iterable[tuple[str, str]] | None,
        contact: bool,
    ) -> Request:
        ruri, routes = self._route()
        h = Headers()
        for route in routes:
            h.add("Route", route)
        h.add("Max-Forwards", _MAX_FORWARDS)
        h.add("From", str(_with_tag(self.local_uri, self.local_tag)))
        to = self.remote_uri if not self.remote_tag else _with_tag(self.remote_uri, self.remote_tag)
        h.add("To", str(to))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        if contact and self.local_contact is not None:
            h.add("Contact", self.local_contact)
        for name, value in headers or ():
            h.add(name, value)
        if body and content_type is not None:
            h.set("Content-Type", content_type)
        h.add("Content-Length", str(len(body)))
        return Request(method=method, uri=ruri, headers=h, body=body)

    def create_request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] | None = None,
    ) -> Request:
        """A request within the dialog (RFC 3261 §12.2.1.1), without Via (the endpoint adds it).

        Takes the next local CSeq.  ``headers`` are appended as given.  ACK and CANCEL
        have their own builders (``create_ack``, ``build_cancel``).
        """
        if self.terminated:
            raise LocalProtocolError("dialog is terminated")
        if method in ("ACK", "CANCEL"):
            raise LocalProtocolError(f"build {method} with create_ack / build_cancel")
        cseq = self.next_cseq()
        if method == "INVITE":
            self.invite_seq = cseq
        return self._build(
            method,
            cseq,
            body=body,
            content_type=content_type,
            headers=headers,
            contact=method in _CONTACT_METHODS,
        )

    def create_ack(
        self,
        cseq: int | None = None,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] | None = None,
    ) -> Request:
        """The ACK for a 2xx to our INVITE (RFC 3261 §13.2.2.4).

        Built like any in-dialog request, but the CSeq number is the INVITE's (default: the
        last INVITE sent in this dialog) and the method ACK; the local CSeq does not move.
        Pass the INVITE's Authorization / Proxy-Authorization in ``headers`` (§22.1).
        Send it with ``endpoint.send_stateless``.
        """
        if self.terminated:
            raise LocalProtocolError("dialog is terminated")
        seq = cseq if cseq is not None else self.invite_seq
        if seq is None:
            raise LocalProtocolError("no INVITE sent in this dialog: give the CSeq number")
        return self._build(
            "ACK",
            seq,
            body=body,
            content_type=content_type,
            headers=headers,
            contact=False,
        )


def build_cancel(invite: Request, *, reason: str | None = None) -> Request:
    """The CANCEL for a client INVITE as it was sent (with our top Via), RFC 3261 §9.1.

    Same Request-URI, Call-ID, To, From and CSeq number as the INVITE, CSeq method CANCEL,
    only the INVITE's top Via (so the same branch), its Route headers; ``reason`` becomes
    a Reason header (RFC 3326), e.g. ``'SIP;cause=200;text="Call completed elsewhere"'``.
    """
    if invite.method != "INVITE":
        raise LocalProtocolError("only INVITE can be cancelled")
    vias = invite.headers.get_list("Via")
    if not vias:
        raise LocalProtocolError("the INVITE has no Via yet: send it first")
    h = Headers()
    h.add("Via", vias[0])
    for route in invite.headers.get_list("Route"):
        h.add("Route", route)
    h.add("Max-Forwards", _MAX_FORWARDS)
    for name in ("From", "To", "Call-ID"):
        value = invite.headers.get(name)
        if value is None:
            raise LocalProtocolError(f"the INVITE has no {name}")
        h.add(name, value)
    h.add("CSeq", f"{invite.cseq.seq} CANCEL")
    if reason is not None:
        h.add("Reason", reason)
    h.add("Content-Length", "0")
    return Request(method="CANCEL", uri=invite.uri, headers=h)


class DialogRegistry:
    """The dialogs the TU registered; the endpoint looks in-dialog requests up here."""

    def __init__(self) -> None:
        self._dialogs: dict[DialogId, Dialog] = {}

    def register(self, dialog: Dialog) -> None:
        """Add (or replace) ``dialog`` under its id."""
        if dialog.terminated:
            raise LocalProtocolError("cannot register a terminated dialog")
        self._dialogs[dialog.id] = dialog

    def unregister(self, dialog: Dialog | DialogId) -> None:
        key = dialog.id if isinstance(dialog, Dialog) else dialog
        self._dialogs.pop(key, None)

    def find(self, dialog_id: DialogId) -> Dialog | None:
        dialog = self._dialogs.get(dialog_id)
        if dialog is not None and dialog.terminated:
            del self._dialogs[dialog_id]
            return None
        return dialog

    def find_for_request(self, request: Request) -> Dialog | None:
        """The dialog a received request belongs to: local tag = To tag, remote = From tag."""
        to_tag = request.to.tag
        if not to_tag:
            return None
        return self.find(DialogId(request.call_id, to_tag, request.from_.tag or ""))

    def find_for_response(self, response: Response) -> Dialog | None:
        """The dialog a received response belongs to: local tag = From tag, remote = To tag."""
        to_tag = response.to.tag
        from_tag = response.from_.tag
        if not to_tag or not from_tag:
            return None
        return self.find(DialogId(response.call_id, from_tag, to_tag))

    def __len__(self) -> int:
        return len(self._dialogs)

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self._dialogs.values()))

    def __contains__(self, dialog: object) -> bool:
        return isinstance(dialog, Dialog) and self._dialogs.get(dialog.id) is dialog
