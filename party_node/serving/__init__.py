"""After training: each party's model bundle (`bundle`, written by `export` when a task
finishes), the user hooks that read new data (`hooks`), and serving: the host's dynamic
batching and prediction pipeline, the collaborator's answers to it, batch prediction.

Nothing here imports grpc; `party_node.transport` carries it, `party_node.app` wires it."""
