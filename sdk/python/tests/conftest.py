"""A live `gpucloud dev` for the SDK tests: the real binary, its own data and config directories,
a 2 s preemption notice so a test can watch one happen."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def dev(tmp_path_factory):
    binary = os.environ.get("GPUCLOUD_BIN", str(ROOT / "target" / "debug" / "gpucloud"))
    if not Path(binary).exists():
        pytest.fail(f"no gpucloud binary at {binary}: cargo build first, or set GPUCLOUD_BIN")
    tmp = tmp_path_factory.mktemp("dev")
    env = dict(os.environ)
    env["GPUCLOUD_CONFIG_DIR"] = str(tmp / "config")
    # Workloads inherit this: they import the SDK from the source tree, with this interpreter.
    env["PYTHONPATH"] = str(ROOT / "sdk" / "python" / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("GPUCLOUD_URL", None)
    env.pop("GPUCLOUD_API_KEY", None)
    out = open(tmp / "dev.out", "w")
    proc = subprocess.Popen(
        [binary, "dev", "--runtime", "process", "--listen", "127.0.0.1:0", "--data-dir", str(tmp / "data"),
         "--spot-notice", "2", "--spot-min-notice", "1", "--spot-min-runtime", "0"],
        stdout=out, stderr=subprocess.DEVNULL, env=env,
    )
    deadline = time.time() + 60
    while "Try:" not in (tmp / "dev.out").read_text():
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("gpucloud dev did not start: " + (tmp / "dev.out").read_text())
        time.sleep(0.1)
    creds = json.loads((tmp / "data" / "credentials.json").read_text())
    yield {"url": creds["url"], "key": creds["tenant_key"], "operator": creds["operator_key"],
           "python": sys.executable, "tmp": tmp, "bin": binary}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
