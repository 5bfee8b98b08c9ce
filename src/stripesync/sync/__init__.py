"""Pushing contacts, their fields and list memberships to the platform (Constant Contact)."""
