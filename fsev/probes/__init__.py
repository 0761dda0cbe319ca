"""fsev.probes."""
