"""Fixtures shared by the unit tests."""

import pytest

from tests.fakes import FakeServices


@pytest.fixture
def services():
    """The application's services on in-memory fakes (no workers, no cache server), closed after the test."""
    services = FakeServices()
    yield services
    services.close()
