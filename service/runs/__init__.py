"""A run over its life: the schedule of its epochs, leases, posted embeddings, prototype versions, failures."""
