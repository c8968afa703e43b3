"""What the services agree on: the shapes that cross a service boundary, and the few pure
rules both sides of one apply (`deals.py`). Imports no service, so a producer and its
consumers import the same definitions."""
