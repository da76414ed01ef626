"""Fixtures for the SIPp interop tests: our SipServer on loopback, a work dir for SIPp.

Every test here is marked `interop` and skipped with a clear reason when `sipp` is missing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from interop_support import ENDPOINT_CONFIG, RecordingTU
from sipp import sipp_path

from app.sip.aio import SipServer, SipServerConfig

SIPP_MISSING = (
    "sipp is not on PATH: install SIPp 3.6 (Debian/Ubuntu package 'sip-tester'; CI installs "
    "it in .ci/run) to run the SIPp interop tests"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    missing = sipp_path() is None
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.interop)
            if missing:
                item.add_marker(pytest.mark.skip(reason=SIPP_MISSING))


@pytest.fixture
def tu() -> RecordingTU:
    return RecordingTU()


@pytest.fixture
async def sip_server(tu: RecordingTU) -> AsyncIterator[SipServer]:
    """Our server on 127.0.0.1, a free port for UDP and TCP, in the test's event loop."""
    server = SipServer(
        SipServerConfig(host="127.0.0.1", port=0, transports=("udp", "tcp")),
        tu,
        endpoint_config=ENDPOINT_CONFIG,
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def sipp_workdir(tmp_path: Path) -> Path:
    workdir = tmp_path / "sipp"
    workdir.mkdir()
    return workdir
