# The BPF C sources ship as package data of fsev.bpf (read with importlib.resources).
