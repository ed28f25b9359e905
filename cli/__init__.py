"""The ``meshp2p`` command line: a thin layer that composes the library into a node."""
