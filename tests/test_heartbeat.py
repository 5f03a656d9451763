"""The backend process's second heartbeat (`mosaic_serving.triton.heartbeat`) against a region
laid out as Triton 2.51's Python backend lays it out. The served tests in
test_reliability_faults show it against the real server: a frozen process is waited for."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mosaic_serving.triton import heartbeat
from reliability import wait_for

HANDLE = 336  # where Triton 2.51 put the IPC control block in the regions seen
REGION_BYTES = 1 << 16
FAKE_STUB = """
import sys, time
from mosaic_serving.triton import heartbeat
print(heartbeat.start().pid, flush=True)
time.sleep(600)
"""


def control_block(flags=(1, 0, 0, 0), mutex_kind=0x90, handles=(496, 8688, 16880, 25072, 33264)) -> bytes:
    """An allocation header and an IPCControlShm: flags, two mutexes, five queue handles."""
    header = struct.pack("<I", 1).ljust(heartbeat.ALLOCATION_HEADER, b"\0")
    block = bytearray(heartbeat.CONTROL_BYTES)
    block[:4] = bytes(flags)
    struct.pack_into("<i", block, heartbeat.STUB_HEALTH_MUTEX + heartbeat.MUTEX_KIND, mutex_kind)
    struct.pack_into("<5Q", block, heartbeat.HANDLES, *handles)
    return header + bytes(block)


@pytest.fixture
def region():
    path = Path("/dev/shm") / f"mosaic_test_heartbeat_{uuid.uuid4().hex}"
    yield path
    path.unlink(missing_ok=True)


def write_region(path: Path, block: bytes) -> None:
    data = bytearray(REGION_BYTES)
    data[HANDLE:HANDLE + len(block)] = block
    path.write_bytes(bytes(data))


def health(path: Path) -> int:
    return path.read_bytes()[HANDLE + heartbeat.ALLOCATION_HEADER]


def set_health(path: Path, value: int) -> None:
    with open(path, "r+b") as file:
        file.seek(HANDLE + heartbeat.ALLOCATION_HEADER)
        file.write(bytes([value]))


def test_a_beat_sets_the_stub_health_flag(region):
    write_region(region, control_block(flags=(0, 0, 0, 1)))
    flag = heartbeat.HealthFlag(region, HANDLE)
    assert health(region) == 0
    flag.beat()
    assert health(region) == 1
    assert region.read_bytes()[HANDLE + heartbeat.ALLOCATION_HEADER + 3] == 1  # `decoupled` untouched


@pytest.mark.parametrize("block, handle, reason", [
    (control_block(flags=(1, 0, 7, 0)), HANDLE, "are not booleans"),
    (control_block(mutex_kind=0), HANDLE, "no process-shared mutex"),
    (control_block(handles=(496, 496, 16880, 25072, 33264)), HANDLE, "not distinct offsets"),
    (control_block(handles=(496, 8688, 16880, 25072, REGION_BYTES)), HANDLE, "not distinct offsets"),
    (control_block(), REGION_BYTES - 64, "does not fit"),
], ids=["flags", "mutex", "same handle", "handle outside", "block outside"])
def test_a_region_laid_out_otherwise_is_refused_and_left_unwritten(region, block, handle, reason):
    write_region(region, block)
    before = region.read_bytes()
    with pytest.raises(heartbeat.LayoutError, match=reason):
        heartbeat.HealthFlag(region, handle)
    assert region.read_bytes() == before


def test_a_process_without_a_stub_command_line_has_no_heartbeat():
    with pytest.raises(heartbeat.LayoutError, match="no stub command line"):
        heartbeat.HealthFlag.of_stub(os.getpid())


def test_a_heartbeat_that_cannot_start_is_reported(region, tmp_path):
    write_region(region, control_block(flags=(0, 0, 0, 0)))
    script = tmp_path / "fake_stub.py"
    script.write_text("import sys\nfrom mosaic_serving.triton import heartbeat\nsys.executable = '/bin/false'\n"
                      "try:\n    heartbeat.start()\nexcept heartbeat.NoHeartbeat as error:\n    print(error)\n")
    stub = subprocess.run([sys.executable, str(script), region.name, "-", "-", "-", "-", str(HANDLE)],
                          capture_output=True, text=True, timeout=60)
    assert "did not start beating (exit status 1)" in stub.stdout, stub
    assert health(region) == 0  # nothing beat


def process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def test_the_heartbeat_beats_for_a_frozen_process_and_dies_with_it(region, tmp_path):
    """A fake stub, started as Triton starts one (region name argv[2], control block argv[7])."""
    write_region(region, control_block(flags=(0, 0, 0, 0)))
    script = tmp_path / "fake_stub.py"
    script.write_text(FAKE_STUB)
    stub = subprocess.Popen([sys.executable, str(script), region.name, "-", "-", "-", "-", str(HANDLE)],
                            stdout=subprocess.PIPE, text=True)
    try:
        beating = int(stub.stdout.readline())
        wait_for(lambda: health(region) == 1, timeout=10)
        os.kill(stub.pid, signal.SIGSTOP)
        for _ in range(3):  # Triton clears the flag at each window; a frozen stub cannot set it
            set_health(region, 0)
            wait_for(lambda: health(region) == 1, timeout=5)
        stub.kill()
        stub.wait()
        wait_for(lambda: process_state(beating) in (None, "Z"), timeout=5)
        set_health(region, 0)
        time.sleep(3 * heartbeat.BEAT_SECONDS)
        assert health(region) == 0  # a dead stub is no longer vouched for
    finally:
        stub.kill()
        stub.wait()


EARLY_STUB = """
import sys
import mosaic_serving.triton  # as the model's module does, first
from mosaic_serving.triton import heartbeat
print(heartbeat._spawned_early.pid, flush=True)
sys.stdin.readline()
print(heartbeat.start().pid, flush=True)
sys.stdin.readline()
"""


def test_a_backend_process_starts_its_heartbeat_as_it_imports_the_package(region, tmp_path):
    """Triton's windows already run while the process imports the model's module: the heartbeat
    beats before `initialize` asks for it, and `initialize` gets that same heartbeat."""
    write_region(region, control_block(flags=(0, 0, 0, 0)))
    stub_executable = tmp_path / heartbeat.STUB_EXECUTABLE  # a Python named as Triton's stub is
    stub_executable.symlink_to(sys.executable)
    script = tmp_path / "model.py"
    script.write_text(EARLY_STUB)
    source = Path(heartbeat.__file__).parents[2]
    stub = subprocess.Popen([str(stub_executable), str(script), region.name, "-", "-", "-", "-", str(HANDLE)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(source)})
    try:
        early = int(stub.stdout.readline())
        wait_for(lambda: health(region) == 1, timeout=10)  # beating, with start() not yet called
        stub.stdin.write("\n")
        stub.stdin.flush()
        assert int(stub.stdout.readline()) == early
    finally:
        stub.kill()
        stub.wait()
    wait_for(lambda: process_state(early) in (None, "Z"), timeout=5)
