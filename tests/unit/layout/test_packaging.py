"""The installed distribution: C ships inside the package, no generic top-level names."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from fsev.probes.program import bpf_dir
from fsev.testing.kernel_rig import FSEV


def test_installed_files_live_under_fsev_only():
    files = [str(f) for f in metadata.files("fsev") or []]
    code = [f for f in files if f.endswith((".py", ".c", ".h"))]
    assert code, files
    assert all(f.startswith("fsev/") for f in code), [f for f in code if not f.startswith("fsev/")]
    for needed in ("fsev/cli/main.py", "fsev/bpf/fsev.h", "fsev/bpf/fsev.bpf.c"):
        assert needed in files


def test_bpf_sources_are_found_inside_the_installed_package():
    d = bpf_dir()
    assert "site-packages" in str(d) or "dist-packages" in str(d), d
    assert (d / "fsev.h").is_file() and (d / "fsev.bpf.c").is_file()


def test_the_early_compile_finds_the_c_where_the_session_does():
    from fsev.cli.entry import include_dir

    assert include_dir() == bpf_dir()


def test_console_script_and_version():
    scripts = (metadata.entry_points(group="console_scripts") if sys.version_info >= (3, 10)
               else metadata.entry_points()["console_scripts"])  # Python 3.9: a dict of groups
    eps = [e for e in scripts if e.name == "fsev"]
    assert [e.value for e in eps] == ["fsev.cli.entry:run"]  # cli/entry.py, then cli/main.py
    r = subprocess.run([FSEV, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"fsev {metadata.version('fsev')}"
