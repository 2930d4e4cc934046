"""Where a warning points, for the tests of cookbook.data.clean."""

import os


def at_caller(warning, test_file: str) -> bool:
    """The warning names the test's line that called the library (stacklevel=2), not the library's own line.
    Under `make mutate`, mutmut's trampoline sits between the two, one frame up, and is named instead."""
    return warning.filename == test_file or warning.filename.endswith(os.path.join("mutmut", "mutation",
                                                                                   "trampoline.py"))
