"""fsev as a service: `fsev serve` holds the probes once and serves every listener.

config.py   the configuration language (the RFC's `MOUNT TYPES [L1 [L2]]` lines) — pure
systemd.py  sd_notify and journald's native protocol
(the daemon, its control socket and the listener client build on those)
"""
