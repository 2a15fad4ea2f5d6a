import sys

from optrewrite.cli import main

sys.exit(main())
