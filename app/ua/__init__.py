"""The user agent: SIP.js ``src/api`` in Python case (see docs/ua-api.md)."""

from app.ua.core import Cancellable, ServerCore, SipCore, TransactionUser
from app.ua.errors import StateTransitionError, UaError
from app.ua.invitation import Invitation
from app.ua.inviter import Credentials, Inviter
from app.ua.sdh import Body, SessionDescriptionHandler, SessionDescriptionHandlerFactory
from app.ua.session import (
    DialogSnapshot,
    EndBy,
    EndCause,
    Session,
    SessionDelegate,
    SessionEnd,
)
from app.ua.state import SessionState
from app.ua.user_agent import UserAgent, UserAgentConfig, UserAgentDelegate

__all__ = [
    "Body",
    "Cancellable",
    "Credentials",
    "DialogSnapshot",
    "EndBy",
    "EndCause",
    "Invitation",
    "Inviter",
    "ServerCore",
    "Session",
    "SessionDelegate",
    "SessionDescriptionHandler",
    "SessionDescriptionHandlerFactory",
    "SessionEnd",
    "SessionState",
    "SipCore",
    "StateTransitionError",
    "TransactionUser",
    "UaError",
    "UserAgent",
    "UserAgentConfig",
    "UserAgentDelegate",
]
