"""Upkeep of the platform's data: the expired analysis cache."""
