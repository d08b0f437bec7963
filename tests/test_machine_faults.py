"""The machine's own faults named in one line (a full disk, an interrupted command) and output that survives
odd names and terminals (time_ray/core/disk.py, the CLI)."""

import errno
import os
import subprocess
import sys

import pytest
import torch

from time_ray.cli import _print_data, main
from time_ray.core.atomic import atomic_path, write_text_atomic
from time_ray.core.checkpoints import save_atomic
from time_ray.core.disk import DiskFull, is_disk_full, message_in


def test_a_full_disk_is_named_with_the_path_the_size_and_the_free_space(small_disk):
    disk = small_disk("1m")
    target = disk / "sweep" / "trials" / "x" / "metrics.parquet"
    with pytest.raises(DiskFull) as raised, atomic_path(target, size=3 * 2**20) as tmp:
        tmp.write_bytes(bytes(3 * 2**20))  # a real ENOSPC from the kernel
    message = str(raised.value)
    assert message.startswith(f"disk full: cannot write {target} (3.0 MiB needed, ")
    assert f"free on {disk})" in message and "free space there or choose another location" in message
    assert list(target.parent.iterdir()) == []  # the temporary file is gone, the target never appeared


def test_a_checkpoint_too_large_for_the_disk_is_a_disk_full_error_too(small_disk):
    """safetensors reports a full disk as its own error (not an OSError): it is recognised by its text."""
    disk = small_disk("1m")
    with pytest.raises(DiskFull, match=r"expert\.safetensors \(2\.0 MiB needed"):
        save_atomic({"w": torch.zeros(2**19)}, disk / "expert.safetensors")


def test_other_write_errors_stay_what_they_are(tmp_path):
    with pytest.raises(PermissionError), atomic_path(tmp_path / "x") as tmp:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))
    with pytest.raises(DiskFull), atomic_path(tmp_path / "y") as tmp:
        raise OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp))
    write_text_atomic(tmp_path / "z", "fine")
    assert (tmp_path / "z").read_text() == "fine"


def test_a_full_disk_is_recognised_in_exceptions_their_causes_and_texts():
    wrapped = RuntimeError("the merge actor failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped) and is_disk_full("IoError(Os { code: 28, kind: StorageFull })")
    assert not is_disk_full(RuntimeError("CUDA error")) and not is_disk_full("connection reset")
    trace = "Traceback ...\n  ...\ntime_ray.core.disk.DiskFull: disk full: cannot write /d/x (1.0 MiB needed, ...)\n"
    assert message_in(trace) == "disk full: cannot write /d/x (1.0 MiB needed, ...)"
    assert message_in("ray.exceptions.RayTaskError: boom") is None


def test_an_interrupted_command_other_than_sweep_does_not_advise_resume(monkeypatch, capsys):
    import time_ray.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_plan", interrupted)
    monkeypatch.setattr(cli, "cmd_sweep", interrupted)
    assert main(["plan", "configs/quickstart.yaml"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "time-ray: interrupted."
    assert main(["sweep", "configs/quickstart.yaml"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "time-ray: interrupted; rerun with --resume to finish the sweep."


def test_output_to_a_terminal_that_is_not_utf8_escapes_what_it_cannot_encode():
    code = "from time_ray.cli import _printable_streams; _printable_streams(); print('caf\\u00e9 \\u732b')"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env={**os.environ, "PYTHONIOENCODING": "ascii"}
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode("ascii").strip() == "caf\\xe9 \\u732b"


def test_a_newline_in_a_class_or_dataset_name_stays_on_its_line(capsys):
    row = {"name": "cars\nfake line", "role": "adaptation", "classes": 1, "n_train": 2, "n_test": 1}
    _print_data("d", [row | {"template": "a photo of a {}.", "caption": "x\ry"}], [["cars\nfake line+++a\tb"]], 32)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5, out
    assert "cars\\nfake line" in out[2] and "x\\ry" in out[2] and out[4] == "  task 1: cars\\nfake line+++a\\tb"
