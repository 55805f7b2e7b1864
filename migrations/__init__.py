"""pbuffer's schema history: an alembic environment that lives inside the package (as ``pbuffer.migrations``).

Run through :mod:`pbuffer.backends.versioning`, never with an ``alembic.ini``: the configuration is built in code,
the connection is passed in, and the application's logging is left alone.
"""
