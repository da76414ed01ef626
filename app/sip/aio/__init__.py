"""asyncio glue of the SIP core: sockets, the endpoint driver, the timer handle."""

from app.sip.aio.server import SipServer, SipServerConfig, SipSettings, TransactionUser
from app.sip.aio.target import Target, select_target
from app.sip.aio.transport import (
    TCP_CONNECT_TIMEOUT,
    TCP_IDLE_TIMEOUT,
    SipTransportLayer,
    TransportConfig,
    TransportStats,
)

__all__ = [
    "TCP_CONNECT_TIMEOUT",
    "TCP_IDLE_TIMEOUT",
    "SipServer",
    "SipServerConfig",
    "SipSettings",
    "SipTransportLayer",
    "Target",
    "TransactionUser",
    "TransportConfig",
    "TransportStats",
    "select_target",
]
