import sys

from tempsamp.cli import main

sys.exit(main())
