import sys

from mlhub_mcp.cli import main

sys.exit(main())
