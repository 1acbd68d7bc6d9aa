"""The task runtime: drives one task's phases for one party. Knows torch and the scheduler
API, not gRPC: it talks to peers and the coordinator through the interfaces in `links`."""
