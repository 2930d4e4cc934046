"""The DeepSeek training cookbook: small, tested helpers for every section of the training guide.

Import the section you need, e.g. `from cookbook import env, models`; each sub-package is one part of the guide.
"""

import logging
import re
import sys


class _TorchaoImportNoise(logging.Filter):
    """Drops the two notices every import of torchao (the `quant` extra) logs on a CPU machine, nothing else.

    torchao is imported by transformers and peft on their own whenever it is installed, so these reach every
    notebook and test, not only the compression ones:
    - `Failed to load <absolute path>/torchao/_C_mxfp8...so` and `..._C_cutlass_90a...so` (logger "torchao"):
      its CUDA-only kernels (MX formats, Hopper CUTLASS) cannot load into a CPU build of torch; the CPU paths need
      neither. Kept on a CUDA build, where a kernel that fails to load is a real problem;
    - `<enum 'KernelPreference'> is an Enum subclass ... register_constant() ... is deprecated` (logger
      "torch.utils._pytree"): torch telling torchao's maintainers about a registration it no longer needs.
    Filters on the two loggers, not a raised level: torchao's other warnings (e.g. an incompatible torch) still show.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if record.name == "torch.utils._pytree":
            return "is an Enum subclass and is now natively supported by torch.compile" not in message
        torch = sys.modules.get("torch")  # torchao imports torch before it logs
        cpu_build = torch is not None and getattr(torch.version, "cuda", None) is None
        return not (cpu_build and re.match(r"Failed to load .*torchao[\\/]_C", message))


# Installed here, the first thing any `import cookbook...` runs, so it precedes the imports that pull in torchao.
_quiet = _TorchaoImportNoise()
logging.getLogger("torchao").addFilter(_quiet)
logging.getLogger("torch.utils._pytree").addFilter(_quiet)

__version__ = "0.1.0"
