"""fleetshard: run a slow test suite across the machines you can SSH into."""

__version__ = "0.1.0"
