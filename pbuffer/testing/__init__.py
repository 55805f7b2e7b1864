"""The Buffer conformance suite, for pbuffer's own backends and for third-party ones.

Subclass the classes below in a test module and provide one fixture, ``make_buffer``: a callable that takes
buffer options (``subject=...``) and returns a new :class:`pbuffer.Buffer` on one shared, initially empty store
(every call in a test must see the same messages, as several ``pbuffer.open`` calls on one sqlite file do)::

    import pytest
    from pbuffer.testing import AsyncBufferConformance, BufferConformance, BufferStateMachineTest

    class TestMyBackend(BufferConformance, AsyncBufferConformance, BufferStateMachineTest):
        @pytest.fixture
        def make_buffer(self, tmp_path):
            return lambda **options: pbuffer.open(f"mybackend://{tmp_path}", **options)

Requires pytest and hypothesis (``pip install 'pbuffer[dev]'``).
"""

from __future__ import annotations

from .conformance import AsyncBufferConformance, BufferConformance, MakeBuffer
from .state_machine import BufferStateMachineTest

__all__ = ["AsyncBufferConformance", "BufferConformance", "BufferStateMachineTest", "MakeBuffer"]
