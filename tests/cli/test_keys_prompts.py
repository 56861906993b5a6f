"""Issue 11 items 1, 2 and 10: the keystore's prompts as a careless user meets them.

The prompt tests run the CLI on a real pseudo-terminal (its controlling terminal, so getpass
talks to it) and type into it, Ctrl-D included.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import sys
import termios
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from kmsenvelope.local import Keystore

PASSPHRASE_ENV = "KMSENVELOPE_KEYSTORE_PASSPHRASE"
CTRL_D = b"\x04"


def _make_controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_on_terminal(
    args: Sequence[str],
    script: Sequence[tuple[str, bytes]],
    env: Mapping[str, str],
    timeout: float = 60,
) -> tuple[int, str]:
    """Run ``kmsenvelope ARGS`` on a new pty; for each (prompt, keys) wait for the prompt text,
    then type the keys. Return the exit code and everything the terminal showed."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kmsenvelope", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=dict(env),
        start_new_session=True,
        preexec_fn=_make_controlling_tty,  # the pty becomes its terminal
        close_fds=True,
    )
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    steps = list(script)

    def pump(wait: float) -> bool:
        nonlocal shown
        ready, _, _ = select.select([master], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        shown += data
        return bool(data)

    try:
        while steps and time.monotonic() < deadline:
            prompt, keys = steps[0]
            if prompt.encode() in shown:
                time.sleep(0.2)  # let the program reach its read
                os.write(master, keys)
                shown = shown.replace(prompt.encode(), b"<prompted>", 1)
                steps.pop(0)
                continue
            if not pump(0.1) and proc.poll() is not None:
                break
        while time.monotonic() < deadline and pump(0.1):
            if proc.poll() is not None and not select.select([master], [], [], 0.2)[0]:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert not steps, f"never prompted for {steps[0][0]!r}; terminal showed {shown!r}"
    return code, shown.decode(errors="replace")


def run_plain(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``kmsenvelope ARGS`` with stdin not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "kmsenvelope", *args],
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kmsenvelope: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def without_passphrase() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}


def assert_clean_error(shown: str, *needles: str) -> None:
    assert "Traceback" not in shown
    assert "internal error" not in shown
    assert "EOFError" not in shown
    assert "kmsenvelope: error: " in shown
    for needle in needles:
        assert needle in shown, (needle, shown)


# -- item 1: Ctrl-D at a prompt -------------------------------------------------------------------


def test_ctrl_d_at_the_passphrase_prompt_is_a_clean_error(keystore_dir: Path) -> None:
    code, shown = run_on_terminal(
        ["keys", "list"], [("Keystore passphrase:", CTRL_D)], without_passphrase()
    )
    assert code == 11, shown
    assert_clean_error(shown, "end of input")


def test_ctrl_d_at_the_new_keystore_passphrase_prompt_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new-keystore"
    env = {**without_passphrase(), "KMSENVELOPE_KEYSTORE": str(target)}
    code, shown = run_on_terminal(
        ["keys", "create", "k"], [("New keystore passphrase:", CTRL_D)], env
    )
    assert code == 11, shown
    assert_clean_error(shown, "end of input")
    assert not Keystore.exists(target)


def test_ctrl_d_at_the_destroy_confirmation_destroys_nothing(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("k")
    keystore.rotate("k")
    code, shown = run_on_terminal(
        ["keys", "destroy", "k", "--version", "1"],
        [("Type the key name to confirm:", CTRL_D)],
        os.environ,
    )
    assert code == 1, shown
    assert "not confirmed" in shown
    assert "Traceback" not in shown
    assert "EOFError" not in shown
    assert keystore.get("k").versions[0].state == "active"


def test_the_destroy_confirmation_on_a_terminal(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("k")
    keystore.rotate("k")
    code, shown = run_on_terminal(
        ["keys", "destroy", "k", "--version", "1"],
        [("Type the key name to confirm:", b"wrong\n")],
        os.environ,
    )
    assert code == 1, shown
    assert keystore.get("k").versions[0].state == "active"
    code, shown = run_on_terminal(
        ["keys", "destroy", "k", "--version", "1"],
        [("Type the key name to confirm:", b"k\n")],
        os.environ,
    )
    assert code == 0, shown
    assert keystore.get("k").versions[0].state == "destroyed"


# -- item 10: the wrong-passphrase message names the variable only if it was used -----------------


def test_a_wrong_passphrase_typed_at_the_prompt_does_not_blame_the_variable(
    keystore_dir: Path,
) -> None:
    code, shown = run_on_terminal(
        ["keys", "list"], [("Keystore passphrase:", b"not the passphrase\n")], without_passphrase()
    )
    assert code == 11, shown
    assert_clean_error(shown, "does not open the keystore")
    assert PASSPHRASE_ENV not in shown
    assert "not the passphrase" not in shown

    from_env = run_plain("keys", "list", env={PASSPHRASE_ENV: "not the passphrase"})
    one_error_line(from_env, 11, "does not open the keystore", PASSPHRASE_ENV)


# -- item 2: destroy without a terminal, and twice ------------------------------------------------


def test_destroy_without_a_terminal_needs_yes(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("k")
    keystore.rotate("k")
    before = (keystore_dir / "keys" / "k.json").read_bytes()
    one_error_line(run_plain("keys", "destroy", "k", "--version", "1"), 2, "--yes", "local:k/1")
    assert (keystore_dir / "keys" / "k.json").read_bytes() == before
    assert keystore.get("k").versions[0].state == "active"
    done = run_plain("keys", "destroy", "k", "--version", "1", "--yes")
    assert done.returncode == 0, done.stderr
    assert keystore.get("k").versions[0].state == "destroyed"


def test_destroying_a_destroyed_version_keeps_its_date(
    keystore: Keystore, keystore_dir: Path
) -> None:
    keystore.create_key("k")
    keystore.rotate("k")
    keystore.destroy_version("k", 1)
    path = keystore_dir / "keys" / "k.json"
    first = path.read_bytes()
    destroyed_on = json.loads(first)["versions"][0]["destroyed"]
    time.sleep(1.1)  # the recorded date has a resolution of one second

    assert keystore.destroy_version("k", 1).versions[0].destroyed == destroyed_on
    again = run_plain("keys", "destroy", "k", "--version", "1")  # no --yes needed: no change
    assert again.returncode == 0, again.stderr
    assert "already destroyed" in again.stderr
    assert destroyed_on in again.stderr
    assert path.read_bytes() == first


def test_help_says_prompts_need_a_terminal() -> None:
    shown = run_plain("keys", "destroy", "--help").stdout
    assert "terminal" in shown
    assert "--yes" in shown
    assert "terminal" in run_plain("keys", "--help").stdout


# -- item 10: keys create -------------------------------------------------------------------------


def test_creating_an_existing_key_is_a_usage_error(keystore: Keystore, keystore_dir: Path) -> None:
    keystore.create_key("twice")
    before = (keystore_dir / "keys" / "twice.json").read_bytes()
    one_error_line(run_plain("keys", "create", "twice"), 2, "local:twice", "already exists")
    assert (keystore_dir / "keys" / "twice.json").read_bytes() == before


@pytest.mark.parametrize("key_type", ["aes128", "rsa2048", "rsa4096", "des"])
def test_type_accepts_only_what_the_local_hsm_makes(key_type: str, keystore_dir: Path) -> None:
    one_error_line(
        run_plain("keys", "create", "typed", "--type", key_type), 2, key_type, "aes256", "rsa3072"
    )
    assert not (keystore_dir / "keys" / "typed.json").exists()


def test_type_help_lists_the_local_types() -> None:
    shown = run_plain("keys", "create", "--help").stdout
    assert "{aes128" not in shown  # no choice list the local HSM would then refuse
    assert "aes256 or rsa3072" in shown


def test_a_new_keystore_refuses_a_short_passphrase(tmp_path: Path) -> None:
    target = tmp_path / "short"
    env = {"KMSENVELOPE_KEYSTORE": str(target), PASSPHRASE_ENV: "1234567"}
    one_error_line(run_plain("keys", "create", "k", env=env), 11, "at least 8 characters")
    assert not Keystore.exists(target)
    env[PASSPHRASE_ENV] = "12345678"
    assert run_plain("keys", "create", "k", env=env).returncode == 0
    assert Keystore.exists(target)


def test_a_short_passphrase_typed_for_a_new_keystore_is_refused_at_once(tmp_path: Path) -> None:
    target = tmp_path / "typed-short"
    env = {**without_passphrase(), "KMSENVELOPE_KEYSTORE": str(target)}
    code, shown = run_on_terminal(
        ["keys", "create", "k"], [("New keystore passphrase:", b"short\n")], env
    )
    assert code == 11, shown
    assert_clean_error(shown, "at least 8 characters")
    assert "Repeat" not in shown
    assert not Keystore.exists(target)
