import sys

from .native import main

sys.exit(main())
