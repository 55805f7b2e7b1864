"""What every backend inherits behind the :class:`pbuffer.Buffer` contract, each job in a module named for it.

- :mod:`.api`: the public methods (``save``, ``pop``, ``claim``...) written once over the primitives;
- :mod:`.group_commit`: saves from several threads share one transaction;
- :mod:`.room`: ``overflow="block"``: a save waits for room;
- :mod:`.expiry`: ``ttl``: reads remove (and count) the expired messages they meet;
- :mod:`.listeners`: callbacks after each committed save, and the rate-limited log of removed messages;
- :mod:`.defaults`: default implementations of optional primitives, for backends that cannot filter in a query;
- :mod:`.tracing`: the producer's W3C trace context carried in each message, and the relay's publish spans.
"""
