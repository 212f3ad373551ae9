"""The OpenMP wait policy chosen as a command starts: threads spin on an idle machine, sleep when other
processes keep the cores busy or under torchrun, and a user's own setting is never overridden."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pipelines.runtime.threads import BUSY_CORES, busy_cores, wait_policy


def _never():
    raise AssertionError("measured although the decision did not need it")


@pytest.mark.parametrize("env", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"},
                                 {"GOMP_SPINCOUNT": "10000"}])
def test_a_users_setting_is_kept(env):
    assert wait_policy(env, _never) is None


def test_torchrun_processes_sleep():
    assert wait_policy({"WORLD_SIZE": "2"}, _never) == "PASSIVE"
    assert wait_policy({"WORLD_SIZE": "1"}, lambda: 0.0) is None


@pytest.mark.parametrize("busy, policy", [(0.0, None), (BUSY_CORES - 0.01, None), (BUSY_CORES, "PASSIVE"),
                                          (1.7, "PASSIVE"), (None, "PASSIVE")])
def test_threads_sleep_when_other_processes_are_busy(busy, policy):
    assert wait_policy({}, lambda: busy) == policy


@pytest.fixture
def spinner():
    """A child process that keeps one core busy."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat (Linux)")
def test_busy_cores_sees_a_busy_process(spinner):
    assert busy_cores(0.3) >= 0.7


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat (Linux)")
def test_a_command_started_beside_a_busy_process_makes_its_threads_sleep(spinner):
    code = ("import sys; from pipelines.runtime.threads import choose_wait_policy; "
            "print(choose_wait_policy()); import torch; print(choose_wait_policy())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["PASSIVE", "PASSIVE"]
    user = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env | {"OMP_WAIT_POLICY": "ACTIVE"}, check=True)
    assert user.stdout.split() == ["ACTIVE", "ACTIVE"]
