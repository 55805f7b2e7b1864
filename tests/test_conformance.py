"""The conformance suite (pbuffer.testing) on every backend in the table, sync and async."""

from __future__ import annotations

import pytest

import pbuffer
from pbuffer.testing import AsyncBufferConformance, BufferConformance, BufferStateMachineTest, MakeBuffer

pytestmark = pytest.mark.conformance


class TestConformance(BufferConformance, AsyncBufferConformance, BufferStateMachineTest):
    @pytest.fixture
    def make_buffer(self, store_url: str) -> MakeBuffer:
        return lambda **options: pbuffer.open(store_url, **options)
