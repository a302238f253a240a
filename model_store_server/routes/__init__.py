"""The store's HTTP routes, one blueprint per API surface (``app.py`` assembles them)."""
