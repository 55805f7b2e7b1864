"""``pbuffer.echo_pb2``, the path the README shows; the module is :mod:`pbuffer.examples.echo_pb2`."""

from .examples.echo_pb2 import EchoRequest, EchoResponse

__all__ = ["EchoRequest", "EchoResponse"]
