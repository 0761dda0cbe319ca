"""fsev as a service: `fsev serve` holds the probes once and serves every listener.

config.py    the configuration language (the RFC's `MOUNT TYPES [L1 [L2]]` lines) — pure
protocol.py  the socket's newline-delimited JSON requests, and a listener's filter
access.py    who is on the other end (SO_PEERCRED) and which mounts its namespace sees
hub.py       the socket: one bounded queue per listener, written from the hub's thread
daemon.py    the service: the session, the watch source, configuration changes, the flight recorder
client.py    the other end: a listener standing where a TraceSession would, and control requests
systemd.py   sd_notify and journald's native protocol
"""
