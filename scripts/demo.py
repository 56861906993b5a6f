"""End-to-end demo on the local software HSM, using the real ``kmsenvelope`` command.

Creates a throwaway keystore and key, encrypts a generated file, inspects the envelope,
decrypts it and checks the result is byte-identical. Run with ``nox -s demo``.
"""

from __future__ import annotations

import filecmp
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path


def step(title: str, *args: str, env: dict[str, str], cwd: Path) -> str:
    cmd = [sys.executable, "-m", "kmsenvelope", *args]
    print(f"\n$ kmsenvelope {shlex.join(args)}    # {title}", flush=True)
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        sys.exit(f"demo failed at: {title} (exit {out.returncode})")
    return out.stdout


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kmsenvelope-demo-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "KMSENVELOPE_KEYSTORE": str(work / "keystore"),
            "KMSENVELOPE_KEYSTORE_PASSPHRASE": "demo passphrase (use a real secret!)",
            "KMSENVELOPE_PLUGINS": "local",
        }
        plain = work / "report.csv"
        with plain.open("w") as fh:
            for i in range(200_000):
                fh.write(f"{i},customer-{i % 977},{(i * 7919) % 100000 / 100:.2f}\n")
        print(f"demo data: {plain.name}, {plain.stat().st_size:,} bytes, in {work}")
        step("create a keystore and an AES-256 key", "keys", "create", "demo", env=env, cwd=work)
        step(
            "encrypt for that key, binding a context",
            "encrypt",
            "-i",
            "report.csv",
            "-o",
            "report.csv.kmsenv",
            "--to",
            "local:demo",
            "--context",
            "purpose=demo",
            env=env,
            cwd=work,
        )
        step("read the header without any key", "inspect", "report.csv.kmsenv", env=env, cwd=work)
        step(
            "decrypt (the context must match)",
            "decrypt",
            "-i",
            "report.csv.kmsenv",
            "-o",
            "report.out.csv",
            "--context",
            "purpose=demo",
            env=env,
            cwd=work,
        )
        step("list keys", "keys", "list", env=env, cwd=work)
        step("verify the audit trail", "audit", "verify", env=env, cwd=work)
        if not filecmp.cmp(plain, work / "report.out.csv", shallow=False):
            sys.exit("demo failed: decrypted file differs from the original")
        print("\nOK: the decrypted file is byte-identical to the original.")


if __name__ == "__main__":
    main()
