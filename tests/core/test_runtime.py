import os
import subprocess
import sys

CHECK = "from mobilenets.core.runtime import tune_allocator; print(tune_allocator())"


def run(env):
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                       env={**os.environ, **env})
    return r.stdout.strip()


def test_allocator_tuning_applies_on_glibc_and_can_be_turned_off():
    assert run({}) == "True"
    assert run({"MOBILENETS_MALLOC_TUNING": "0"}) == "False"
    assert run({"MALLOC_MMAP_MAX_": "0"}) == "False"      # the user's own setting wins
