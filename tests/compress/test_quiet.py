"""torchao's import noise is filtered by `import cookbook` (cookbook/__init__.py); its other messages are not.

The noise belongs to the `quant` extra, so its tests live here; the filter itself sits in the package root because
transformers and peft import torchao on their own, before any `cookbook.compress` import.
"""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

import cookbook  # noqa: F401  (installs the filters)
from tests.compress.tiny import needs_torchao

CPU_BUILD = torch.version.cuda is None
KERNEL = ("Failed to load /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
          "Could not load this library: /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so")
ENUM = ("%s is an Enum subclass and is now natively supported by torch.compile as an opaque value type. Calling "
        "register_constant() on Enum subclasses is deprecated and will be an error in a future release.")


def _passes(logger_name, message, args=None):
    record = logging.LogRecord(logger_name, logging.WARNING, __file__, 1, message, args, None)
    return logging.getLogger(logger_name).filter(record)


@pytest.mark.skipif(not CPU_BUILD, reason="on CUDA builds of torch the kernel-load failures are kept")
def test_cuda_kernel_load_failures_are_dropped_on_cpu_builds_only():
    assert not _passes("torchao", KERNEL)
    assert _passes("torchao", "Failed to load /venv/site-packages/other/_C_ops.so: missing symbol")
    assert _passes("torchao", "Skipping import of cpp extensions due to incompatible torch version")


def test_the_enum_notice_is_dropped_and_other_pytree_messages_are_kept():
    assert not _passes("torch.utils._pytree", ENUM, ("<enum 'KernelPreference'>",))
    assert _passes("torch.utils._pytree", "some other pytree warning")
    assert _passes("torch.utils._pytree", KERNEL)  # each rule on its own logger only


# A spy filter, added before `import cookbook` adds its own, sees every record; stderr shows what got through.
_SPY = """
import json, logging
seen = []
class Spy(logging.Filter):
    def filter(self, record):
        seen.append(record.getMessage())
        return True
for name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(name).addFilter(Spy())
import cookbook, torchao, torchao.quantization
print(json.dumps(seen))
"""


@needs_torchao
@pytest.mark.skipif(not CPU_BUILD, reason="on CUDA builds of torch the kernel-load failures are kept")
def test_importing_cookbook_then_torchao_prints_nothing():
    # transformers and peft import torchao the same way (peft adds only time here)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _SPY], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    # the noise is real at the pinned versions (else the filter can go) ...
    assert any("torchao" in m and m.startswith("Failed to load") for m in seen), seen
    assert any("is an Enum subclass" in m for m in seen), seen
    assert run.stderr == ""  # ... and none of it reaches the user
