"""Fixtures shared by all tests."""
from __future__ import annotations

import pytest

from tests.helpers import StinsSender, free_port


@pytest.fixture
def stins_port() -> int:
    return free_port()


@pytest.fixture
def stins_sender(stins_port):
    sender = StinsSender(stins_port)
    yield sender
    sender.close()
