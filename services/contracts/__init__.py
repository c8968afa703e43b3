"""What the services agree on: the shapes that cross a service boundary. Imports no
service, so a producer and its consumers import the same definitions."""
