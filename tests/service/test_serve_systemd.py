"""A real `fsev serve` as systemd runs it: READY=1 over $NOTIFY_SOCKET only once
attached, and err/warn events of the real kernel in a real journald."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

import pytest
from support.journald import journald as journald_fixture

from fsev.events import EventType
from fsev.service.systemd import MESSAGE_IDS
from fsev.testing.kernel_rig import FSEV, ext4, tmpfs
from fsev.testing.service_rig import fsev_serve

pytestmark = pytest.mark.root
journald = journald_fixture


def test_ready_comes_after_the_probes_attach_with_the_rungs_in_status():
    d = tempfile.mkdtemp(prefix="fsev-notify-")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(60)
    try:
        with fsev_serve("* err\n", start=False) as svc:
            proc = subprocess.Popen([FSEV, "serve", "--config", svc.config_path, "--socket", svc.socket_path],
                                    stderr=subprocess.PIPE, text=True, env={**svc.env, "NOTIFY_SOCKET": path})
            try:
                msg = sock.recv(4096).decode()
                # READY only when listeners can attach: the socket is there and answers
                assert os.path.exists(svc.socket_path)
                assert msg.startswith("READY=1\nSTATUS=watching ")
                assert "ext4_error=tracepoint" in msg
                proc.send_signal(15)
                assert sock.recv(4096).decode() == "STOPPING=1"
                assert proc.wait(30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(d)


def test_the_services_err_and_warn_events_reach_journald(journald):
    with ext4() as x, tmpfs("4m") as t, fsev_serve(f"journald on\n{x.mount_point} err\n{t} warn,info\n",
                                                   start=False) as svc:
        env = {**svc.env, "FSEV_JOURNALD_SOCKET": journald.socket}
        proc = subprocess.Popen([FSEV, "serve", "--config", svc.config_path, "--socket", svc.socket_path],
                                stderr=subprocess.PIPE, text=True, env=env)
        svc.proc = proc
        deadline = time.monotonic() + 60
        while not os.path.exists(svc.socket_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        x.trigger_errors(2)
        subprocess.run(["dd", "if=/dev/zero", f"of={t}/fill", "bs=1M", "count=8"], capture_output=True)
        errs = journald.wait_for(2, "-p", "err")
        assert len(errs) == 2
        for e in errs:
            assert e["PRIORITY"] == "3" and e["MESSAGE_ID"] == MESSAGE_IDS[EventType.FS_ERROR]
            assert e["FSEV_MOUNT_POINT"] == x.mount_point and e["FSEV_FUNCTION"] == "trigger_test_error"
            assert e["FSEV_DEV"] == x.dev
        warn = journald.wait_for(3)
        enospc = [e for e in warn if e.get("MESSAGE_ID") == MESSAGE_IDS[EventType.ENOSPC]]
        assert enospc and enospc[0]["PRIORITY"] == "4" and enospc[0]["FSEV_MOUNT_POINT"] == t
        assert not [e for e in warn if e.get("FSEV_CLASS") == "info"]
        assert svc.stop() == 0
