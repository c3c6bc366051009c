"""One module per export target; each registers itself in acula_edge.export.registry."""
