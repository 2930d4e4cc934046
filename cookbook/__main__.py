import sys

from cookbook.runner import main

sys.exit(main())
