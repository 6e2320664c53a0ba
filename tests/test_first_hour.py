"""The demo's printed next steps run as printed, from a shell where nothing is activated."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import require

REPO = Path(__file__).resolve().parent.parent

STEP = re.compile(r"^\s+\$ (.+)$", re.MULTILINE)
URL = re.compile(r"https?://\S+")


def _fresh_shell_env() -> dict[str, str]:
    """The environment of a new terminal: this installation's bin folder not on PATH, no venv active,
    no display (so ``view`` opens no browser)."""
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "DISPLAY", "WAYLAND_DISPLAY", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                  if p and os.path.abspath(p) != bin_dir)
    return env


def _serve_and_fetch(argv: list[str], cwd: Path, env: dict[str, str], interrupted: int = 130) -> str:
    """Start a serving command, fetch the first URL it prints (token included), then stop it with Ctrl-C
    (SIGINT to its process group, as a terminal sends it), expecting exit status ``interrupted``; return its
    stderr."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            found = URL.search(line)
            url = found.group(0) if found else None
        assert url, (f"{shlex.join(argv)} printed no URL; stderr:\n"
                     f"{proc.stderr.read() if proc.poll() is not None else ''}")
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200
            assert answer.read()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == interrupted, f"{shlex.join(argv)} after Ctrl-C: status {proc.returncode}\n{err}"
        assert "Traceback" not in err, err
        return err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_demo_next_steps_run_as_printed(tmp_path: Path) -> None:
    """A small demo run from another folder prints commands that each work as typed in a fresh shell."""
    require("neuroglancer")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _fresh_shell_env()
    demo = [str(Path(sys.executable).with_name("blockfs")), "demo", "--size-gib", "0.001", "--silent",
            "--output", str(tmp_path / "demo-output")]
    result = subprocess.run(demo, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    steps = [shlex.split(line, comments=True) for line in STEP.findall(result.stdout)]
    assert any("view" in argv for argv in steps), f"the demo prints no view command to run:\n{result.stdout}"
    assert any("view" in line for line in result.stdout.splitlines()[-5:]), \
        f"the demo's last lines do not say how to view the result:\n{result.stdout}"
    for argv in steps:
        if "view" in argv or "serve" in argv:
            _serve_and_fetch(argv, elsewhere, env)
        else:
            done = subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{shlex.join(argv)}: status {done.returncode}\n{done.stderr}"


def _demo(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``blockfs demo`` at its smallest size, writing ``folder/demo-output``, run from ``folder``."""
    demo = [str(Path(sys.executable).with_name("blockfs")), "demo", "--size-gib", "0.001", "--silent",
            "--output", "demo-output"]
    result = subprocess.run(demo, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_readme_activation_block_runs_as_printed(tmp_path: Path) -> None:
    """The README's first shell block (activate, then a tool on what make demo left) runs in bash from a
    clone's folder after the demo."""
    text = (REPO / "README.md").read_text()
    start = text.index("**The tools are in `.venv/bin`**")
    block = re.search(r"\n\n((?:    .+\n)+)", text[start:])
    assert block, "README.md: no command block after the note on .venv/bin"
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = _fresh_shell_env()
    _demo(clone, env)
    script = "set -e\n" + "\n".join(line[4:] for line in block.group(1).splitlines())
    done = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script}\nstatus {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_make_view_serves_the_demo(tmp_path: Path) -> None:
    """``make view`` after the demo prints a URL that answers, and stops on Ctrl-C (the install step, done
    by whoever installed this environment, is not redone)."""
    require("neuroglancer")
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    env = _fresh_shell_env()
    _demo(tmp_path, env)
    venv = Path(sys.executable).parent.parent
    err = _serve_and_fetch(["make", "-C", str(REPO), f"VENV={venv}", "-o", f"{venv}/.installed", "view",
                            f"DEMO_OUTPUT={tmp_path / 'demo-output'}"], tmp_path, env, interrupted=-signal.SIGINT)
    assert "Error 130" in err, f"blockfs view under make did not end as interrupted:\n{err}"
