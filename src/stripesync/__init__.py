"""stripesync: Stripe customers become permission-based marketing contacts."""

__version__ = "0.1.0"
