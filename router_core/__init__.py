"""Routing science: encoder, loss, training, index, routing rule, evaluation. No HTTP, no Redis."""
