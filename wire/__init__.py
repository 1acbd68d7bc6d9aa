"""How every heteronn process speaks gRPC: one server factory, one channel factory, TLS
settings, the tensor codec and payload chunking. Shared by party nodes and the coordinator."""
