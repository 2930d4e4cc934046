"""The DeepSeek training cookbook: small, tested helpers for every section of the training guide.

Import the section you need, e.g. `from cookbook import env, models`; each module is one topic.
"""

__version__ = "0.1.0"
