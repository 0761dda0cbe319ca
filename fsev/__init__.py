"""fsev: filesystem health events for Linux, taken from the kernel with eBPF."""

__version__ = "0.1.0"
