"""Fixtures: a fake Cloudflare deployment per test, checked for leaks when the test ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cloudflare import fake_js
from tests.cloudflare.runtime import FakeCloudflare
from tests.cloudflare.support import check_clean, make_cloudflare  # installs the fake modules


@pytest.fixture(autouse=True)
def _fresh_fakes() -> Iterator[None]:
    fake_js.FFI_WARNINGS.clear()
    yield
    fake_js.FFI_WARNINGS.clear()
    while fake_js.OPEN_DATABASES:
        fake_js.OPEN_DATABASES.pop().close()


@pytest.fixture
def cf() -> Iterator[FakeCloudflare]:
    """A deployment whose objects stay awake between events."""
    deployment = make_cloudflare()
    yield deployment
    check_clean(deployment)


@pytest.fixture(params=[False, True], ids=["awake", "hibernate-every-event"])
def cf_any(request: pytest.FixtureRequest) -> Iterator[FakeCloudflare]:
    """The same deployment, once awake and once hibernating after every event."""
    deployment = make_cloudflare(hibernate_every_event=request.param)
    yield deployment
    check_clean(deployment)
