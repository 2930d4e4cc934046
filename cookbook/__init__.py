"""The DeepSeek training cookbook: small, tested helpers for every section of the training guide.

Import the section you need, e.g. `from cookbook import env, models`; each sub-package is one part of the guide.
"""

import logging

# torchao (the `quant` extra) logs a warning naming each of its CUDA kernel libraries it cannot load, with the
# machine's absolute path, whenever transformers imports it on a CPU-only machine; the cookbook never uses them.
logging.getLogger("torchao").setLevel(logging.ERROR)

__version__ = "0.1.0"
